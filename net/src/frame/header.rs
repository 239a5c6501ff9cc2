//! The frame's header types: the [`Kind`] of a frame, the fixed
//! [`FrameHeader`] every frame starts with, and the [`DataHeader`] at the
//! start of a data frame's payload (their byte layout is in the
//! [module documentation](super) of `frame`).

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A batch of records; the payload starts with a [`DataHeader`].
    Data = 1,
    /// First frame on a connection: the sender's identity and parameters.
    Hello = 2,
    /// Liveness, both directions.
    Heartbeat = 3,
    /// Flow-control grant for `channel`: payload is a `u32 LE` count.
    Credit = 4,
    /// Coordinator to node: a deployment (placement, query) to install.
    Deploy = 5,
    /// Coordinator to node: start (or stop) the deployed query.
    Start = 6,
    /// A chunk of checkpointed state on its way to a backup.
    CheckpointChunk = 7,
    /// Acknowledgement (of a checkpoint, deployment, ...), by `seq`.
    Ack = 8,
    /// Recovery and scale-out protocol messages.
    Recovery = 9,
    /// Results and metrics gathered by the coordinator.
    Report = 10,
    /// Orderly close of the connection.
    Goodbye = 11,
    /// The connecting side's proof of the cluster secret, the frame after
    /// the acceptor's challenge (see [`crate::auth`]).
    Auth = 12,
}

impl Kind {
    /// Every kind, in wire order.
    pub const ALL: [Kind; 12] = [
        Kind::Data,
        Kind::Hello,
        Kind::Heartbeat,
        Kind::Credit,
        Kind::Deploy,
        Kind::Start,
        Kind::CheckpointChunk,
        Kind::Ack,
        Kind::Recovery,
        Kind::Report,
        Kind::Goodbye,
        Kind::Auth,
    ];

    /// The kind with wire value `b`, if any.
    pub fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Data),
            2 => Some(Kind::Hello),
            3 => Some(Kind::Heartbeat),
            4 => Some(Kind::Credit),
            5 => Some(Kind::Deploy),
            6 => Some(Kind::Start),
            7 => Some(Kind::CheckpointChunk),
            8 => Some(Kind::Ack),
            9 => Some(Kind::Recovery),
            10 => Some(Kind::Report),
            11 => Some(Kind::Goodbye),
            12 => Some(Kind::Auth),
            _ => None,
        }
    }

    /// Whether frames of this kind carry a [`DataHeader`].
    pub fn is_data(self) -> bool {
        self == Kind::Data
    }
}

/// The fixed header of every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame carries.
    pub kind: Kind,
    /// Frame flags; no bits are defined yet and all are passed through.
    pub flags: u16,
    /// The multiplexed channel on the connection (for data: one
    /// edge / producer / consumer stream, as the layer above assigns).
    pub channel: u32,
    /// Sequence number; for data frames the batch's sequence number.
    pub seq: u64,
}

/// The batch fields of a data frame (everything of an in-process batch but
/// its `seq`, which is the frame's, and its records).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataHeader {
    /// The exchange edge of the dataflow.
    pub edge: u32,
    /// The producing instance.
    pub producer: u32,
    /// The producer's watermark when the batch closed.
    pub watermark: u64,
    /// Number of records in the records buffer.
    pub count: u32,
    /// Batch flags (final batch, ...).
    pub flags: u32,
}
