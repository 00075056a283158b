//! Coalescing: concurrent calls of one write gathered into one statement and one commit.
//!
//! A [`Coalescer`] has lanes (runq's use one each), each running one statement at a time. A call goes out at
//! once when a lane is free, alone; while every lane is busy, the calls that arrive wait in
//! line, and the next lane to come free takes all of them (up to its batch size) into one
//! statement. So an idle system pays nothing for it, and a busy one pays one statement, one
//! commit and one WAL flush for many calls, instead of queueing each for a pool connection.
//!
//! Each caller still gets its own answer, and only after the statement that carries its write
//! has committed: a claim or an outcome coalesced is exactly as durable as one sent alone.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::StoreError;

type Call<I, O> = (I, oneshot::Sender<Result<O, StoreError>>);

/// Gathers concurrent calls of one write into batches; see the module's documentation.
pub struct Coalescer<I, O> {
    calls: mpsc::UnboundedSender<Call<I, O>>,
}

impl<I, O> Clone for Coalescer<I, O> {
    fn clone(&self) -> Self {
        Self { calls: self.calls.clone() }
    }
}

impl<I: Send + 'static, O: Send + 'static> Coalescer<I, O> {
    /// Starts a coalescer on the current runtime: `lanes` batches in flight at most, each of at
    /// most `max_batch` calls. `write` gets a batch and answers each of its calls, in order; a
    /// call it leaves unanswered (a short answer, a panic) gets [`StoreError::Unavailable`], so
    /// its caller retries as after an outage. It stops once every handle is dropped.
    pub fn start<F, Fut>(lanes: usize, max_batch: usize, write: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<O, StoreError>>> + Send + 'static,
    {
        let (calls, mut waiting) = mpsc::unbounded_channel::<Call<I, O>>();
        let write = Arc::new(write);
        let lanes = Arc::new(Semaphore::new(lanes.max(1)));
        let max_batch = max_batch.max(1);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            loop {
                // A free lane first, then whatever waits: calls pile up while the lanes are busy.
                let Ok(lane) = lanes.clone().acquire_owned().await else { return };
                if waiting.recv_many(&mut batch, max_batch).await == 0 {
                    return;
                }
                let (items, answers): (Vec<I>, Vec<_>) = batch.drain(..).unzip();
                let write = write.clone();
                tokio::spawn(async move {
                    let _lane = lane;
                    let results = write(items).await;
                    for (answer, result) in answers.into_iter().zip(results) {
                        // A caller that went away (its request was dropped) loses only its answer.
                        let _ = answer.send(result);
                    }
                });
            }
        });
        Self { calls }
    }

    /// Sends `item` with the next batch and waits for its answer.
    pub async fn call(&self, item: I) -> Result<O, StoreError> {
        let (answer, answered) = oneshot::channel();
        self.calls.send((item, answer)).map_err(|_| unanswered())?;
        answered.await.map_err(|_| unanswered())?
    }
}

fn unanswered() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

/// Runs a batch's write as one statement, and when that fails, each call alone: one call the
/// database refuses (a value it can't store) then fails only itself, never its batch-mates.
/// A batch of one is written alone at once. `together` answers in the order of its calls.
pub async fn each_on_failure<I, O, B, BF, S, SF>(items: Vec<I>, together: B, alone: S) -> Vec<Result<O, StoreError>>
where
    B: FnOnce(&[I]) -> BF,
    BF: Future<Output = Result<Vec<O>, StoreError>>,
    S: Fn(I) -> SF,
    SF: Future<Output = Result<O, StoreError>>,
{
    if items.len() > 1 {
        match together(&items).await {
            Ok(answers) if answers.len() == items.len() => return answers.into_iter().map(Ok).collect(),
            Ok(answers) => {
                tracing::error!(
                    asked = items.len(),
                    answered = answers.len(),
                    "a coalesced write answered the wrong number of calls; writing each alone"
                )
            }
            Err(e) => tracing::debug!(error = %e, calls = items.len(), "a coalesced write failed; writing each alone"),
        }
    }
    let mut answers = Vec::with_capacity(items.len());
    for item in items {
        answers.push(alone(item).await);
    }
    answers
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// The batches a write was given, in order.
    type Seen = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A write that records each batch it got and blocks until the test lets it go.
    fn gated() -> (Coalescer<u32, u32>, Seen, Arc<Semaphore>) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let (seen, open) = (batches.clone(), gate.clone());
        let coalescer = Coalescer::start(1, 3, move |items: Vec<u32>| {
            let (seen, open) = (seen.clone(), open.clone());
            async move {
                seen.lock().unwrap().push(items.clone());
                open.acquire().await.unwrap().forget();
                items.into_iter().map(|i| if i == 13 { Err(StoreError::Timeout) } else { Ok(i * 10) }).collect()
            }
        });
        (coalescer, batches, gate)
    }

    #[tokio::test(start_paused = true)]
    async fn calls_that_arrive_while_the_lane_is_busy_go_out_together_each_with_its_own_answer() {
        let (coalescer, batches, gate) = gated();
        let first = tokio::spawn({
            let c = coalescer.clone();
            async move { c.call(1).await }
        });
        // The first call is in the lane's write before any other arrives.
        while batches.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = [2, 13, 4, 5]
            .into_iter()
            .map(|i| {
                let c = coalescer.clone();
                tokio::spawn(async move { c.call(i).await })
            })
            .collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(*batches.lock().unwrap(), vec![vec![1]], "nothing else goes out while the only lane is busy");
        gate.add_permits(3);
        assert_eq!(first.await.unwrap().unwrap(), 10);
        let answers: Vec<_> = futures::future::join_all(rest).await.into_iter().map(|r| r.unwrap().ok()).collect();
        assert_eq!(
            answers,
            vec![Some(20), None, Some(40), Some(50)],
            "each call gets its own answer, the refused one its error"
        );
        assert_eq!(
            *batches.lock().unwrap(),
            vec![vec![1], vec![2, 13, 4], vec![5]],
            "at most max_batch per batch, in arrival order"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_its_write_leaves_unanswered_gets_an_error_to_retry() {
        let coalescer: Coalescer<u32, u32> = Coalescer::start(2, 8, |_items: Vec<u32>| async { Vec::new() });
        assert!(matches!(coalescer.call(7).await, Err(StoreError::Unavailable(_))));
    }

    #[tokio::test]
    async fn a_batch_whose_statement_fails_is_written_call_by_call() {
        let answers = each_on_failure(
            vec![1u32, 13, 3],
            |_all: &[u32]| async { Err::<Vec<u32>, _>(StoreError::Timeout) },
            |i| async move { if i == 13 { Err(StoreError::Timeout) } else { Ok(i) } },
        )
        .await;
        let answers: Vec<_> = answers.into_iter().map(Result::ok).collect();
        assert_eq!(answers, vec![Some(1), None, Some(3)]);
        let together = each_on_failure(
            vec![1u32, 2],
            |all: &[u32]| {
                let doubled = all.iter().map(|i| i * 2).collect();
                async move { Ok(doubled) }
            },
            |_: u32| async { panic!("a batch that succeeded is not written again") },
        )
        .await;
        assert_eq!(together.into_iter().map(Result::ok).collect::<Vec<_>>(), vec![Some(2), Some(4)]);
    }
}
