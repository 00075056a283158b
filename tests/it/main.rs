//! Integration tests, linked into one binary. Each module is one area of runq; all of them run
//! over real sockets against real Postgres (`#[sqlx::test]` gives each test a fresh database).

mod api;
mod architecture;
mod auth;
mod binary;
mod browser;
mod client;
mod cloud_run_jobs;
mod common;
mod dashboard;
mod dashboard_insights;
mod deploy;
mod dev;
mod e2e;
mod e2e_faults;
mod faults;
mod gcs;
mod http_functions;
mod limits;
mod operations;
mod python_client;
mod python_functions;
mod reliability;
mod schedules;
mod store_types;
mod traces;
mod unique;
mod workflows;
