//! What crosses the wire between producers, agents and requesters: queue
//! messages (protocol v1 and the legacy launcher shape), replies, and signed
//! callbacks. Pure data and parsing; no I/O.
