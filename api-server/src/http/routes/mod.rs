pub mod api_keys;
pub mod applications;
pub mod end_users;
pub mod meta;
pub mod packages;
pub mod realtime;
pub mod runs;
pub mod sink;
