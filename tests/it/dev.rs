//! `runq dev`'s own parts: the throwaway Postgres cluster it starts when there is none.

use std::time::Duration;

#[tokio::test]
async fn throwaway_cluster_starts_answers_and_stops() {
    let dir = std::env::temp_dir().join(format!("runq-cluster-{}", uuid::Uuid::new_v4().simple()));
    let port = crate::common::free_port();
    let cluster = runq::dev::LocalCluster::start(&dir, port).expect("initdb and pg_ctl are installed");
    let pool = runq::store::connect_lazy(&cluster.url("postgres"), 1, Duration::from_secs(10)).unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await.unwrap();
    assert_eq!(one, 1);
    // Starting again finds it running and reuses it.
    let again = runq::dev::LocalCluster::start(&dir, port).unwrap();
    assert_eq!(again.url("x"), cluster.url("x"));
    pool.close().await;
    cluster.stop().unwrap();
    let after = runq::store::connect_lazy(&cluster.url("postgres"), 1, Duration::from_millis(500)).unwrap();
    assert!(sqlx::query("SELECT 1").execute(&after).await.is_err(), "stopped");
    let _ = std::fs::remove_dir_all(&dir);
}
