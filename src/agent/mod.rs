//! The node agent: takes session requests off the fleet's queue while it has
//! free slots, launches and supervises one browser per session, and serves
//! the control API and the authenticated DevTools gateway on one port.
