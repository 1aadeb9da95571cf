//! Switchboard's integration tests, as one test binary (the server is linked once): each test
//! starts the real server (in this process, or the binary as a child process) on a free port
//! and talks to it over real sockets. `common` is the harness; `cluster` the multi-node
//! scenarios both distributed engines run.

mod cluster;
mod common;

mod abuse;
mod api;
mod auth;
mod bad_input;
mod cli;
mod durable;
mod lifecycle;
mod nats_cluster;
mod pubsub;
mod pusher;
mod redis_cluster;
mod rfc6455;
mod rooms;
mod smoke;
mod streams;
mod tls;
mod turn;
