//! The database edge: statuses, priorities and error kinds are bound and decoded as their Rust
//! types against real Postgres (text columns with CHECK constraints, names inside `jsonb`), and a
//! row runq can't decode is an error, never silently another status.

use runq::job::{ErrorKind, JobError, Priority, Status};
use runq::store::{self, ListFilter, StoreError};
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

async fn insert(pool: &PgPool) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO jobs (id, owner, function, priority, args, status, max_attempts)
         VALUES ($1, 'alice', 'noop', $2, '{}', $3, 3)",
    )
    .bind(id)
    .bind(Priority::High)
    .bind(Status::Queued)
    .execute(pool)
    .await
    .unwrap();
    id
}

#[sqlx::test]
async fn every_status_and_priority_passes_the_checks_and_reads_back_as_itself(pool: PgPool) {
    let id = insert(&pool).await;
    for priority in Priority::ALL {
        for status in Status::ALL {
            // Bound as the types, decoded through the checked `FromRow` path.
            let back: (Priority, Status) =
                sqlx::query_as("UPDATE jobs SET priority = $2, status = $3 WHERE id = $1 RETURNING priority, status")
                    .bind(id)
                    .bind(priority)
                    .bind(status)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            assert_eq!(back, (priority, status));
            let stored: (String, String) = sqlx::query_as("SELECT priority, status FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(stored, (priority.as_str().to_owned(), status.as_str().to_owned()));
            let job = store::get(&pool, id, None).await.unwrap().unwrap();
            assert_eq!((job.priority, job.status.status), (priority, status));
            assert_eq!(store::get_status(&pool, id, None).await.unwrap().unwrap().status, status);
            let filter = ListFilter { status: Some(status), ..Default::default() };
            assert_eq!(store::list(&pool, &filter, 10, std::time::Duration::from_secs(5)).await.unwrap().len(), 1);
        }
    }
    // Arrays bind as text[] (the multi-row insert's priorities).
    let all: Vec<Priority> =
        sqlx::query_scalar("SELECT $1::text[]").bind(Priority::ALL.to_vec()).fetch_one(&pool).await.unwrap();
    assert_eq!(all, Priority::ALL);
}

#[sqlx::test]
async fn every_error_kind_is_stored_under_its_name_and_reads_back(pool: PgPool) {
    let id = insert(&pool).await;
    for kind in ErrorKind::ALL {
        let error = JobError { kind, message: format!("a {kind}"), retryable: false };
        sqlx::query("UPDATE jobs SET error = $2 WHERE id = $1")
            .bind(id)
            .bind(Json(&error))
            .execute(&pool)
            .await
            .unwrap();
        let (name, text): (String, ErrorKind) =
            sqlx::query_as("SELECT error->>'kind', $1::text FROM jobs WHERE id = $2")
                .bind(kind)
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!((name.as_str(), text), (kind.as_str(), kind));
        assert_eq!(store::get(&pool, id, None).await.unwrap().unwrap().error, Some(error));
    }
}

fn is_decode_error(e: &StoreError) -> bool {
    matches!(e, StoreError::Other(sqlx::Error::ColumnDecode { .. }))
}

#[sqlx::test]
async fn a_row_runq_cannot_decode_is_an_error_not_another_status(pool: PgPool) {
    let id = insert(&pool).await;
    // A status this binary doesn't know (a newer migration's, say): the CHECK no longer stops it.
    sqlx::query("ALTER TABLE jobs DROP CONSTRAINT jobs_status_check").execute(&pool).await.unwrap();
    sqlx::query("UPDATE jobs SET status = 'paused' WHERE id = $1").bind(id).execute(&pool).await.unwrap();
    let e = store::get(&pool, id, None).await.unwrap_err();
    assert!(is_decode_error(&e), "{e:?}");
    let e = store::get_status(&pool, id, None).await.unwrap_err();
    assert!(is_decode_error(&e), "{e:?}");
    let e = store::list(&pool, &ListFilter::default(), 10, std::time::Duration::from_secs(5)).await.unwrap_err();
    assert!(is_decode_error(&e), "{e:?}");
    let e = store::unclaimable(&pool, id).await.unwrap_err();
    assert!(is_decode_error(&e), "{e:?}");

    // An error of a kind this binary doesn't know: an error too, not a job without its error.
    sqlx::query(
        r#"UPDATE jobs SET status = 'failed', error = '{"kind": "melted", "message": "m", "retryable": false}'
           WHERE id = $1"#,
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    let e = store::get(&pool, id, None).await.unwrap_err();
    assert!(is_decode_error(&e), "{e:?}");
}
