//! Appstrate API server.
