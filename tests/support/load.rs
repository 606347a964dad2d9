//! Steady load for availability tests: workers that send requests through the stub in a loop
//! (GET, and POST with a body checked on return) and sort every outcome, so a test can assert
//! that a fault failed nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use http_body_util::BodyExt;

use super::{Pki, StubProc, front_client};

#[derive(Default)]
pub struct Outcomes {
    pub ok: AtomicUsize,
    /// No response at all, or an error status: the failures these tests forbid.
    pub failed: AtomicUsize,
    /// The response had started when the connection died (allowed after kill -9 only).
    pub cut: AtomicUsize,
    pub progress: tokio::sync::Notify,
    pub stop: AtomicBool,
    pub errors: std::sync::Mutex<Vec<String>>,
    /// The slowest request that succeeded, and which it was.
    pub slowest: std::sync::Mutex<(std::time::Duration, String)>,
}

impl Outcomes {
    /// Waits (bounded) for `n` more successful requests from now.
    pub async fn wait_more(&self, n: usize) {
        let before = self.ok.load(Ordering::SeqCst);
        self.wait_ok(before + n).await;
    }

    /// Asserts that no request failed and no response was cut off.
    pub fn assert_all_served(&self) {
        let errors = self.errors.lock().unwrap().clone();
        assert!(errors.is_empty(), "{} failed requests: {errors:#?}", errors.len());
        assert_eq!(self.cut.load(Ordering::SeqCst), 0, "no response was cut off");
    }

    /// Forgets the slowest request so far (to measure from a fault on).
    pub fn reset_slowest(&self) {
        *self.slowest.lock().unwrap() = Default::default();
    }

    pub async fn wait_ok(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + super::PATIENCE;
        loop {
            let notified = self.progress.notified();
            if self.ok.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::timeout_at(deadline, notified).await.expect("the load makes progress");
        }
    }
}

/// `workers` loops sending requests (GET, and POST too if `posts`) until stopped.
pub fn start_load(
    pki: &Pki,
    stub: &StubProc,
    workers: usize,
    posts: bool,
) -> (Arc<Outcomes>, Vec<tokio::task::JoinHandle<()>>) {
    start_load_at(pki, &format!("{}/clusters/dev/echo", stub.url), workers, posts)
}

/// Like [`start_load`], to the echo endpoint at `base` (`https://HOST:PORT/clusters/C/echo`).
pub fn start_load_at(
    pki: &Pki,
    base: &str,
    workers: usize,
    posts: bool,
) -> (Arc<Outcomes>, Vec<tokio::task::JoinHandle<()>>) {
    let outcomes = Arc::new(Outcomes::default());
    let handles = (0..workers)
        .map(|w| {
            let (client, outcomes) = (front_client(pki, w % 2 == 0), outcomes.clone());
            let base = base.to_owned();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !outcomes.stop.load(Ordering::SeqCst) {
                    n += 1;
                    let post = posts && n.is_multiple_of(2);
                    let body = format!("worker {w} request {n}");
                    let request = http::Request::builder()
                        .method(if post { "POST" } else { "GET" })
                        .uri(format!("{base}/{w}/{n}"))
                        .body(tether::bridge::full(if post { body.clone() } else { String::new() }))
                        .unwrap();
                    let started = std::time::Instant::now();
                    let outcome = match client.request(request).await {
                        Err(e) => Err(format!("no response: {e:?}")),
                        Ok(response) if response.status() != 200 => {
                            let status = response.status();
                            let text = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            Err(format!("status {status}: {}", String::from_utf8_lossy(&text)))
                        }
                        Ok(response) => match response.into_body().collect().await.map(|b| b.to_bytes()) {
                            Ok(got) if !post || got == body.as_bytes() => Ok(true),
                            Ok(_) => Err("wrong body".into()),
                            Err(_) => Ok(false),
                        },
                    };
                    let took = started.elapsed();
                    if outcome == Ok(true) {
                        let mut slowest = outcomes.slowest.lock().unwrap();
                        if took > slowest.0 {
                            *slowest = (took, format!("{} /{w}/{n}", if post { "POST" } else { "GET" }));
                        }
                    }
                    match outcome {
                        Ok(true) => outcomes.ok.fetch_add(1, Ordering::SeqCst),
                        Ok(false) => outcomes.cut.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            outcomes
                                .errors
                                .lock()
                                .unwrap()
                                .push(format!("{} /{w}/{n}: {e}", if post { "POST" } else { "GET" }));
                            outcomes.failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                    outcomes.progress.notify_waiters();
                }
            })
        })
        .collect();
    (outcomes, handles)
}

pub async fn stop_load(outcomes: &Outcomes, handles: Vec<tokio::task::JoinHandle<()>>) {
    outcomes.stop.store(true, Ordering::SeqCst);
    for handle in handles {
        tokio::time::timeout(super::PATIENCE, handle).await.expect("workers finish").unwrap();
    }
}
