//! The engine against mock API services.
