//! A recorder of concurrent histories and a linearizability checker against the contract's
//! sequential state machine.
