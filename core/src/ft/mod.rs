//! The sans-IO fault-tolerance protocol cores (checkpoint acknowledgement,
//! failure detection, recovery) and their deterministic simulator: being
//! built (the runtime's recovery is in `spate::control`).
