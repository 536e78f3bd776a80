//! The views. Each reads signals and calls functions it is given; none holds
//! chat logic of its own.

pub mod app;
pub mod chat_view;
pub mod composer;
pub mod header;
pub mod join;
pub mod members;
pub mod message_list;
pub mod typing;
