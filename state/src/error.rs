//! The errors of the state store and its handles.
//!
//! Two classes, as everywhere in Spate: *operating* errors (a file could not
//! be grown, a value is larger than a segment) are returned as a
//! [`StateError`] and carry the values a caller needs; *programmer* errors (a
//! key routed to an instance that does not own its bin, a handle used with the
//! wrong table) trip a `debug_assert!` in debug builds and are returned as a
//! `StateError` in release builds.

use std::path::PathBuf;

use crate::codec::CodecError;
use crate::keyspace::{Bin, BinRange};

/// Why a state store operation failed.
#[derive(Debug)]
pub enum StateError {
    /// A file operation on the store's segment file failed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done (`"create directory"`, `"grow"`, `"map"`, ...).
        op: &'static str,
        /// The error from the operating system.
        source: std::io::Error,
    },
    /// The store configuration is invalid.
    InvalidConfig {
        /// The field of [`crate::store::StoreConfig`] (or the argument) at fault.
        field: &'static str,
        /// Why it is invalid, with the values involved.
        reason: String,
    },
    /// The key's bin is not owned by this store: the record was routed to the
    /// wrong instance (a programmer error).
    BinNotOwned {
        /// The key's bin.
        bin: Bin,
        /// The bins this store owns.
        bins: BinRange,
    },
    /// A record (header, key and value) or list item does not fit in one
    /// segment.
    RecordTooLarge {
        /// Size of the record that was to be stored, in bytes.
        record_bytes: usize,
        /// Largest record a segment can hold with this configuration.
        max_bytes: usize,
    },
    /// [`crate::store::StateStore::get_or_insert_fixed`] found a value of
    /// another length under the key.
    ValueSizeMismatch {
        /// The length asked for.
        expected: usize,
        /// The length of the stored value.
        found: usize,
    },
    /// A key holds a value where a list was expected, or the reverse.
    KindMismatch {
        /// What the operation expected (`"value"` or `"list"`).
        expected: &'static str,
        /// What the key holds.
        found: &'static str,
    },
    /// The table id does not name a table of this store.
    UnknownTable {
        /// The table id.
        table: u16,
        /// Number of tables registered in this store.
        tables: usize,
    },
    /// A table name is already registered with other types (or as a raw
    /// table), or a raw mutation was attempted on a typed table.
    TableTypeMismatch {
        /// The table's name.
        name: String,
        /// The handle type (or `"raw"`) the table was registered with.
        registered: &'static str,
        /// The handle type (or `"raw"`) of the request.
        requested: &'static str,
    },
    /// The store already holds the maximum number of tables.
    TooManyTables {
        /// The limit, [`crate::store::TABLES_MAX`].
        max: usize,
    },
    /// A bin of a dense table reached the most parts a bin can have.
    DenseBinFull {
        /// The bin.
        bin: Bin,
        /// The keys it holds.
        keys: u64,
    },
    /// The segment file reached the largest number of segments it can address.
    StoreFull {
        /// The limit, in segments.
        segments_max: u64,
    },
    /// A key or value could not be encoded.
    Codec(CodecError),
    /// A checkpoint (or one chunk of it) is corrupt, truncated or does not
    /// fit its chain: it is never loaded.
    CorruptCheckpoint {
        /// The checkpoint's id (0 if not known yet).
        checkpoint: u64,
        /// The bin concerned, if known.
        bin: Option<Bin>,
        /// The page (of the segment file) concerned, if known.
        page: Option<u64>,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint was asked for while the stream of the previous one is
    /// still producing chunks: finish it (hand out its trailer) or drop it
    /// first.
    CheckpointInFlight {
        /// The checkpoint still streaming.
        checkpoint: u64,
        /// The checkpoint asked for (0 if none: another operation).
        requested: u64,
    },
    /// The backup store holds no complete checkpoint for the instance.
    NoCheckpoint {
        /// The instance id.
        instance: String,
    },
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Io { path, op, source } => {
                write!(f, "state store: cannot {op} {}: {source}", path.display())
            }
            StateError::InvalidConfig { field, reason } => {
                write!(f, "state store config: invalid {field}: {reason}")
            }
            StateError::BinNotOwned { bin, bins } => {
                write!(f, "bin {bin} is not owned by this state store (it owns {bins})")
            }
            StateError::RecordTooLarge { record_bytes, max_bytes } => write!(
                f,
                "state record of {record_bytes} bytes does not fit in a segment (at most {max_bytes} bytes)"
            ),
            StateError::ValueSizeMismatch { expected, found } => {
                write!(f, "fixed-size value of {expected} bytes requested but {found} bytes are stored")
            }
            StateError::KindMismatch { expected, found } => {
                write!(f, "key holds a {found} where a {expected} was expected")
            }
            StateError::UnknownTable { table, tables } => {
                write!(f, "table id {table} is unknown (the store has {tables} tables)")
            }
            StateError::TableTypeMismatch { name, registered, requested } => {
                write!(f, "table {name:?} is registered as {registered}, not as {requested}")
            }
            StateError::TooManyTables { max } => {
                write!(f, "a state store holds at most {max} tables")
            }
            StateError::DenseBinFull { bin, keys } => {
                write!(f, "bin {bin} of a dense table holds {keys} keys, the most its parts can")
            }
            StateError::StoreFull { segments_max } => {
                write!(f, "state store is full: at most {segments_max} segments")
            }
            StateError::Codec(e) => write!(f, "state codec: {e}"),
            StateError::CorruptCheckpoint { checkpoint, bin, page, reason } => {
                write!(f, "checkpoint {checkpoint} is corrupt")?;
                if let Some(b) = bin {
                    write!(f, " in bin {b}")?;
                }
                if let Some(p) = page {
                    write!(f, " at page {p}")?;
                }
                write!(f, ": {reason}")
            }
            StateError::CheckpointInFlight { checkpoint, requested } => write!(
                f,
                "cannot begin checkpoint {requested}: checkpoint {checkpoint} is still streaming \
                 (finish or drop its stream first)"
            ),
            StateError::NoCheckpoint { instance } => {
                write!(f, "no complete checkpoint of instance {instance:?} in the backup store")
            }
        }
    }
}

impl std::error::Error for StateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StateError::Io { source, .. } => Some(source),
            StateError::Codec(e) => Some(e),
            _ => None,
        }
    }
}

impl From<CodecError> for StateError {
    fn from(e: CodecError) -> Self {
        StateError::Codec(e)
    }
}
