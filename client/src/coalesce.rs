//! Coalescing: the row requests a client has in flight to one node travel
//! together.
//!
//! A lone request opens a QUIC stream of its own, and the node serves it on
//! a task of its own: at 64 requests in flight that is a stream, a task and
//! a few thread wakeups per request at both ends, and the profile showed
//! those (not tstore's code) dominate a read's cost. A [`Coalescer`] per
//! node session queues the requests for that node; one task takes whatever
//! is queued when it wakes, up to [`MAX_COALESCED`] requests and
//! [`MAX_BATCH_BYTES`], and sends them as one `DataMany` on one stream. The
//! node serves each as if it came alone and answers each as soon as it
//! finishes (`DataAt`), so a slow write does not hold back a read that
//! travelled with it.
//!
//! Nothing waits on a timer to fill a batch: the sender yields a few
//! scheduling turns ([`GATHER_TURNS`]) so that callers woken together queue
//! together, then takes what is there; a request alone goes alone, as
//! before, microseconds later. (The FoundationDB client batches the same
//! way; Redis pipelining is the manual form.)
//!
//! What travels together fails together: when a batch's stream breaks or
//! its answers stop coming for the request timeout, every request not yet
//! answered gets the same error ([`TransportError::Shared`]), which the
//! routing client handles as it handles a lone request's: a write's outcome
//! is then unknown, and it is resent with its identity, which the shard
//! recognises.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tstore_core::wire::{AdminReply, AdminRequest, DataRequest, MAX_COALESCED};
use tstore_transport::frame::{encoded_len, DEFAULT_MAX_FRAME};
use tstore_transport::{ClientSession, TransportError};

/// Batches in flight per node at once; requests arriving while that many
/// are out queue and leave together.
pub(crate) const MAX_IN_FLIGHT: usize = 64;

/// Scheduling turns the sender yields before it takes what is queued. The
/// answers to a batch arrive in bursts and wake their callers together; a
/// few turns let those callers queue their next requests, so they leave in
/// one batch rather than one by one. Measured on 3 nodes at concurrency 64
/// (docs/engineering-notes.md, "Coalescing"): no turn, about 1.5 requests
/// per stream; four, about ten. A turn with nothing else to run costs well
/// under a microsecond.
const GATHER_TURNS: usize = 4;

/// The encoded requests one batch carries at most: half a frame, so the
/// batch always fits the node's frame limit. A larger request goes alone.
pub(crate) const MAX_BATCH_BYTES: usize = DEFAULT_MAX_FRAME / 2;

/// Requests queued per node before a caller waits to queue: far above what
/// a client keeps in flight, a bound all the same.
const QUEUE: usize = 4096;

type Answer = Result<AdminReply, TransportError>;

/// Row requests sent and the streams they took, over every node of a client.
#[derive(Debug, Default)]
pub(crate) struct TrafficCounters {
    pub(crate) requests: AtomicU64,
    pub(crate) streams: AtomicU64,
}

struct Job {
    req: DataRequest,
    size: usize,
    reply: oneshot::Sender<Answer>,
}

/// The queue of row requests to one node, and the task that sends them.
/// The task ends when the coalescer is dropped, after sending what was
/// queued.
pub(crate) struct Coalescer {
    queue: mpsc::Sender<Job>,
    session: Arc<ClientSession>,
    task: tokio::task::JoinHandle<()>,
}

impl Coalescer {
    /// Starts the sending task on the current tokio runtime; `timeout`
    /// bounds how long a batch waits for its answers.
    pub(crate) fn new(
        session: Arc<ClientSession>,
        timeout: Duration,
        traffic: Arc<TrafficCounters>,
    ) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(session.clone(), rx, timeout, traffic));
        Self {
            queue,
            session,
            task,
        }
    }

    /// Sends what is queued, waits for the answers, then closes the session.
    pub(crate) async fn close(self) {
        drop(self.queue);
        let _ = self.task.await;
        if let Ok(session) = Arc::try_unwrap(self.session) {
            session.close().await;
        }
    }

    /// The session the requests travel on (for the requests that are not
    /// rows).
    pub(crate) fn session(&self) -> &Arc<ClientSession> {
        &self.session
    }

    /// Sends one row request, alone or with others, and waits for its answer.
    pub(crate) async fn call(&self, req: DataRequest) -> Answer {
        let addr = self.session.remote_addr();
        // A request whose size cannot be computed cannot be encoded either:
        // it goes alone, and fails alone with the encoder's error.
        let size = encoded_len(&req).unwrap_or(usize::MAX);
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Job { req, size, reply }).await.is_err() {
            return Err(TransportError::NoReply { addr });
        }
        answer
            .await
            .unwrap_or(Err(TransportError::NoReply { addr }))
    }
}

/// Takes what is queued and sends it, at most [`MAX_IN_FLIGHT`] batches at
/// once.
async fn run(
    session: Arc<ClientSession>,
    mut rx: mpsc::Receiver<Job>,
    timeout: Duration,
    traffic: Arc<TrafficCounters>,
) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => {
                    // Closed: return once every batch has its answers.
                    let _ = permits.acquire_many(MAX_IN_FLIGHT as u32).await;
                    return;
                }
            },
        };
        if first.reply.is_closed() {
            continue; // its caller gave up before it left
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        // Callers woken by the same burst of answers queue their next
        // requests within a few scheduling turns: let them.
        for _ in 0..GATHER_TURNS {
            tokio::task::yield_now().await;
        }
        let mut bytes = first.size;
        let mut batch = vec![first];
        while batch.len() < MAX_COALESCED && bytes < MAX_BATCH_BYTES {
            let Ok(job) = rx.try_recv() else { break };
            if job.reply.is_closed() {
                continue;
            }
            if bytes.saturating_add(job.size) > MAX_BATCH_BYTES {
                carried = Some(job);
                break;
            }
            bytes += job.size;
            batch.push(job);
        }
        traffic.streams.fetch_add(1, Ordering::Relaxed);
        traffic
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let session = session.clone();
        tokio::spawn(async move {
            send(&session, batch, timeout).await;
            drop(permit);
        });
    }
}

/// Sends one batch and hands each answer to its caller as it arrives.
async fn send(session: &ClientSession, mut batch: Vec<Job>, timeout: Duration) {
    if batch.len() == 1 {
        let job = batch.pop().expect("one job");
        let answer = session
            .request::<_, AdminReply>(&AdminRequest::Data(job.req))
            .await;
        let _ = job.reply.send(answer);
        return;
    }
    let (reqs, mut waiting): (Vec<DataRequest>, Vec<Option<oneshot::Sender<Answer>>>) =
        batch.into_iter().map(|j| (j.req, Some(j.reply))).unzip();
    let addr = session.remote_addr();
    let failure = match tokio::time::timeout(timeout, answer(session, reqs, &mut waiting)).await {
        Ok(Ok(())) => TransportError::NoReply { addr },
        Ok(Err(e)) => e,
        Err(_) => TransportError::Timeout { addr, timeout },
    };
    let failure = Arc::new(failure);
    for reply in waiting.into_iter().flatten() {
        let _ = reply.send(Err(TransportError::Shared(failure.clone())));
    }
}

/// Sends `reqs` as one `DataMany` and delivers the answers; returns when
/// the node ends the stream (every request answered, unless it broke off).
async fn answer(
    session: &ClientSession,
    reqs: Vec<DataRequest>,
    waiting: &mut [Option<oneshot::Sender<Answer>>],
) -> Result<(), TransportError> {
    let mut replies = session
        .request_stream::<_, AdminReply>(&AdminRequest::DataMany(reqs))
        .await?;
    while let Some(reply) = replies.next().await? {
        match reply {
            AdminReply::DataAt { index, reply } => {
                if let Some(tx) = waiting.get_mut(index as usize).and_then(Option::take) {
                    let _ = tx.send(Ok(AdminReply::Data(reply)));
                }
            }
            // Anything else answers the batch as a whole (a node refusing
            // it): every request still waiting gets it.
            other => {
                for tx in waiting.iter_mut().filter_map(Option::take) {
                    let _ = tx.send(Ok(other.clone()));
                }
            }
        }
    }
    Ok(())
}
