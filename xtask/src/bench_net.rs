//! `cargo xtask bench net`: the QUIC transport against the same framing over TCP + TLS.
//!
//! Two endpoints on loopback in one process (a two-worker tokio runtime). For each message size:
//!
//! - one-way: node 1 sends node 2 as many consensus-class messages as it can for `--secs`
//!   (`Endpoint::send_wait`, so nothing is dropped) and node 2 counts what arrives;
//! - request/response: a client sends one request at a time and awaits the echoed reply;
//! - concurrent request/response: `--concurrency` tasks share one client, each sending its next
//!   request as soon as its reply arrives (requests/s, CPU µs per request, latency).
//!
//! The baseline carries the same frames (`net_quic::frame`) over tokio TCP + tokio-rustls, with
//! the same TLS configuration (`Credentials::rustls_*_config`) and the same pipeline shape: a
//! bounded queue into a writer task that batches frames into one buffered write, and a reader
//! task that decodes frames into a bounded queue to the application. Both readers hand received
//! chunks to the decoder without copying them (`FrameDecoder::push`): QUIC's stream chunks, and
//! for TCP a fresh buffer per read. The concurrent TCP baseline pipelines like the QUIC client
//! does: one connection, requests tagged with an id, a writer task batching queued requests, a
//! reader task waking each caller by id; the server reads requests into a queue to the
//! application and a writer task batches the replies. One-way runs of the two
//! transports are interleaved over `--rounds` rounds and the median is reported, so background
//! load hits both alike. The last line is `quic-vs-tcp-tls: <ratio>`, QUIC over TCP in 1 KiB
//! one-way messages per second.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use net_quic::frame::{self, FrameDecoder};
use net_quic::{
    certs, Bytes, Client, ClientConfig, Credentials, Endpoint, EndpointConfig, Limits, NodeId,
    PeerMessage, Protocol, CLIENT_ALPN, PEER_ALPN,
};
use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::rustls::pki_types::ServerName;

/// Arguments of `cargo xtask bench net`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds of sending per one-way measurement.
    #[arg(long, default_value_t = 0.6)]
    pub secs: f64,
    /// One-way rounds per size and transport (interleaved); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds of sequential requests per request/response measurement.
    #[arg(long, default_value_t = 1.0)]
    pub rr_secs: f64,
    /// Requests in flight at once in the concurrent request/response measurement.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Message sizes in bytes (payload), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64,1024,65536")]
    pub sizes: Vec<usize>,
}

const CLUSTER: &str = "bench";
/// Queue bounds of the TCP pipeline: the same as the QUIC endpoint's defaults.
const QUEUE: usize = 4096;
/// Bytes gathered into one write by the TCP writer, as the QUIC writer does.
const WRITE_BATCH: usize = 256 << 10;
/// Every network wait in the benchmark is bounded by this (beyond the measured time).
const STALL: Duration = Duration::from_secs(30);

/// An opaque payload, serialized as one byte string (a length and a copy, no per-byte encoding).
#[derive(Debug, Clone)]
struct Blob(Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BlobVisitor;
        impl Visitor<'_> for BlobVisitor {
            type Value = Blob;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }
        }
        d.deserialize_byte_buf(BlobVisitor)
    }
}

struct BenchProtocol;
impl Protocol for BenchProtocol {
    type Peer = Blob;
    type Request = Blob;
    type Response = Blob;
}

/// Runs the benchmark.
pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(
        args.secs > 0.0 && args.rr_secs > 0.0,
        "durations must be positive"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

/// One size's results for one transport.
#[derive(Debug, Default, Clone)]
struct Row {
    msgs_per_sec: f64,
    mb_per_sec: f64,
    cpu_us_per_msg: f64,
    p50_us: u64,
    p99_us: u64,
    requests: u64,
}

impl Row {
    fn new(size: usize, rates: &[Rate], lat: &Histogram<u64>) -> Row {
        let msgs = median(rates.iter().map(|r| r.msgs_per_sec).collect());
        Row {
            msgs_per_sec: msgs,
            mb_per_sec: msgs * size as f64 / 1e6,
            cpu_us_per_msg: median(rates.iter().map(|r| r.cpu_us_per_msg).collect()),
            p50_us: lat.value_at_quantile(0.5),
            p99_us: lat.value_at_quantile(0.99),
            requests: lat.len(),
        }
    }

    fn line(&self, size: usize, transport: &str) -> String {
        format!(
            "{:<8} {:<8} {:>10.0} {:>8.1} {:>9.2} {:>8} {:>8} {:>8}",
            size_name(size),
            transport,
            self.msgs_per_sec,
            self.mb_per_sec,
            self.cpu_us_per_msg,
            self.p50_us,
            self.p99_us,
            self.requests
        )
    }
}

async fn run_async(args: Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    certs::write_dev_certs(
        dir.path(),
        CLUSTER,
        &[NodeId(1), NodeId(2)],
        &["bench".to_string()],
    )?;
    let creds1 = Credentials::load_node(dir.path(), NodeId(1))?;
    let creds2 = Credentials::load_node(dir.path(), NodeId(2))?;
    let client_creds = Credentials::load_client(dir.path(), "bench")?;

    let mut quic = Quic::start(&creds1, &creds2, &client_creds)
        .await
        .context("starting the QUIC endpoints")?;
    let mut tcp = Tcp::start(&creds1, &creds2, &client_creds)
        .await
        .context("starting the TCP+TLS baseline")?;

    let secs = Duration::from_secs_f64(args.secs);
    let rr_secs = Duration::from_secs_f64(args.rr_secs);
    let steps = args.sizes.len() * (2 * args.rounds + 4);
    let mut step = 0;
    let mut results: Vec<(usize, Row, Row)> = Vec::new();
    let mut concurrent_results: Vec<(usize, Concurrent, Concurrent)> = Vec::new();
    for &size in &args.sizes {
        let payload = Blob(vec![0x5a; size]);
        let mut quic_rates = Vec::new();
        let mut tcp_rates = Vec::new();
        for round in 1..=args.rounds {
            for (name, rates) in [("quic", &mut quic_rates), ("tcp+tls", &mut tcp_rates)] {
                step += 1;
                let rate = if name == "quic" {
                    quic.one_way(&payload, secs).await?
                } else {
                    tcp.one_way(&payload, secs).await?
                };
                eprintln!(
                    "[{step:>2}/{steps}] {name:<7} one-way  {:>6} round {round}: {:>9.0} msgs/s, {:>6.2} µs CPU/msg",
                    size_name(size),
                    rate.msgs_per_sec,
                    rate.cpu_us_per_msg
                );
                rates.push(rate);
            }
        }
        let mut latencies = Vec::new();
        for name in ["quic", "tcp+tls"] {
            step += 1;
            let lat = if name == "quic" {
                quic.request_response(&payload, rr_secs).await?
            } else {
                tcp.request_response(&payload, rr_secs).await?
            };
            eprintln!(
                "[{step:>2}/{steps}] {name:<7} req/resp {:>6}: p50 {} µs, p99 {} µs ({} requests)",
                size_name(size),
                lat.value_at_quantile(0.5),
                lat.value_at_quantile(0.99),
                lat.len()
            );
            latencies.push(lat);
        }
        let mut concurrent = Vec::new();
        for name in ["quic", "tcp+tls"] {
            step += 1;
            let run = if name == "quic" {
                quic.concurrent(&payload, rr_secs, args.concurrency).await?
            } else {
                tcp.concurrent(&payload, rr_secs, args.concurrency).await?
            };
            eprintln!(
                "[{step:>2}/{steps}] {name:<7} {} in flight {:>6}: {:.0} req/s, {:.2} µs CPU/req, p50 {} µs, p99 {} µs",
                args.concurrency,
                size_name(size),
                run.requests_per_sec,
                run.cpu_us_per_request,
                run.p50_us,
                run.p99_us
            );
            concurrent.push(run);
        }
        results.push((
            size,
            Row::new(size, &quic_rates, &latencies[0]),
            Row::new(size, &tcp_rates, &latencies[1]),
        ));
        concurrent_results.push((size, concurrent[0], concurrent[1]));
    }
    let (sent, received) = (quic.node1.stats(), quic.node2.stats());
    quic.stop().await;
    tcp.stop();

    println!();
    println!(
        "bench net: loopback, 2 tokio workers; one-way = median of {} rounds x {:.1} s (interleaved), \
         request/response = {:.1} s sequential",
        args.rounds, args.secs, args.rr_secs
    );
    println!(
        "{:<8} {:<8} {:>10} {:>8} {:>9} {:>8} {:>8} {:>8}",
        "size", "transport", "msgs/s", "MB/s", "CPU µs/msg", "p50 µs", "p99 µs", "requests"
    );
    for (size, q, t) in &results {
        println!("{}", q.line(*size, "quic"));
        println!("{}", t.line(*size, "tcp+tls"));
    }
    println!();
    println!(
        "{:<8} {:>12} {:>14} {:>10}",
        "size", "msgs/s q/t", "CPU/msg q/t", "p50 q/t"
    );
    for (size, q, t) in &results {
        println!(
            "{:<8} {:>12.2} {:>14.2} {:>10.2}",
            size_name(*size),
            q.msgs_per_sec / t.msgs_per_sec.max(1e-9),
            q.cpu_us_per_msg / t.cpu_us_per_msg,
            q.p50_us as f64 / t.p50_us.max(1) as f64
        );
    }
    println!();
    println!(
        "concurrent request/response: {} requests in flight on one client connection, {:.1} s",
        args.concurrency, args.rr_secs
    );
    println!(
        "{:<8} {:<8} {:>10} {:>10} {:>8} {:>8} {:>12}",
        "size", "transport", "req/s", "CPU µs/req", "p50 µs", "p99 µs", "req/s q/t"
    );
    for (size, q, t) in &concurrent_results {
        println!("{}", q.line(*size, "quic", None));
        println!("{}", t.line(*size, "tcp+tls", Some(q)));
    }
    println!(
        "quic counters: node 1 sent {} frames ({} dropped, {} lost, {} reconnects); node 2 received {} (peer frames and requests)",
        sent.frames_sent, sent.dropped_queue_full, sent.lost_in_flight, sent.reconnects, received.frames_received
    );
    let key = results
        .iter()
        .find(|(size, _, _)| *size == 1024)
        .or(results.first())
        .ok_or_else(|| anyhow!("no sizes measured"))?;
    println!(
        "quic-vs-tcp-tls: {:.2}",
        key.1.msgs_per_sec / key.2.msgs_per_sec.max(1e-9)
    );
    Ok(())
}

/// CPU time used so far by every thread of this process (Linux `schedstat`, nanoseconds), so a
/// run on a busy machine can be judged by CPU per message as well as by wall-clock rate.
fn process_cpu() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// A concurrent request/response measurement.
#[derive(Debug, Clone, Copy)]
struct Concurrent {
    requests_per_sec: f64,
    cpu_us_per_request: f64,
    p50_us: u64,
    p99_us: u64,
}

impl Concurrent {
    /// The row; the TCP row (given the QUIC one) ends with the QUIC/TCP ratio of requests/s.
    fn line(&self, size: usize, transport: &str, quic: Option<&Concurrent>) -> String {
        let ratio = quic
            .map(|q| {
                format!(
                    "{:.2}",
                    q.requests_per_sec / self.requests_per_sec.max(1e-9)
                )
            })
            .unwrap_or_default();
        format!(
            "{:<8} {:<8} {:>10.0} {:>10.2} {:>8} {:>8} {:>12}",
            size_name(size),
            transport,
            self.requests_per_sec,
            self.cpu_us_per_request,
            self.p50_us,
            self.p99_us,
            ratio
        )
    }
}

/// Runs `concurrency` tasks for `secs`, each calling `exchange` (one request and its reply)
/// again as soon as the last one is done.
async fn run_concurrent<F, Fut>(
    concurrency: usize,
    secs: Duration,
    exchange: F,
) -> Result<Concurrent>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let cpu_before = process_cpu();
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let exchange = exchange.clone();
            tokio::spawn(async move {
                let mut hist = histogram();
                while started.elapsed() < secs {
                    let t = Instant::now();
                    exchange().await?;
                    hist.record(t.elapsed().as_micros().max(1) as u64)?;
                }
                Ok::<_, anyhow::Error>(hist)
            })
        })
        .collect();
    let mut hist = histogram();
    for task in tasks {
        hist.add(bounded("concurrent requests", task).await???)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = match (cpu_before, process_cpu()) {
        (Some(before), Some(after)) => (after - before).as_secs_f64(),
        _ => f64::NAN,
    };
    Ok(Concurrent {
        requests_per_sec: hist.len() as f64 / elapsed,
        cpu_us_per_request: cpu * 1e6 / hist.len().max(1) as f64,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
    })
}

fn check_echo(payload: &Blob, reply: &Blob) -> Result<()> {
    if reply.0.len() != payload.0.len() {
        bail!(
            "echo of {} bytes came back as {}",
            payload.0.len(),
            reply.0.len()
        );
    }
    Ok(())
}

/// A one-way measurement: delivered messages per second and CPU microseconds per message.
#[derive(Debug, Clone, Copy)]
struct Rate {
    msgs_per_sec: f64,
    cpu_us_per_msg: f64,
}

fn size_name(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(STALL, f)
        .await
        .map_err(|_| anyhow!("{what}: no progress for {STALL:?}"))
}

/// Receives until `target` is known (when the sender finishes) and reached; returns msgs/s.
async fn count_until_done<T>(
    started: Instant,
    cpu_before: Option<Duration>,
    sender: tokio::task::JoinHandle<Result<Result<u64>>>,
    rx: &mut mpsc::Receiver<T>,
) -> Result<Rate> {
    let mut sender = Some(sender);
    let mut target = None;
    let mut received = 0u64;
    // One timer for the whole run (not one per message).
    let stalled = tokio::time::sleep(2 * STALL);
    tokio::pin!(stalled);
    loop {
        if target.is_some_and(|t| received >= t) {
            break;
        }
        tokio::select! {
            msg = rx.recv() => {
                msg.ok_or_else(|| anyhow!("the receiving side closed"))?;
                received += 1;
            }
            () = &mut stalled => bail!("one-way run: no completion within {:?}", 2 * STALL),
            done = async { sender.as_mut().expect("guarded").await }, if sender.is_some() => {
                target = Some(done???);
                sender = None;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = match (cpu_before, process_cpu()) {
        (Some(before), Some(after)) => (after - before).as_secs_f64(),
        _ => f64::NAN,
    };
    Ok(Rate {
        msgs_per_sec: received as f64 / elapsed,
        cpu_us_per_msg: cpu * 1e6 / received.max(1) as f64,
    })
}

/// Two QUIC endpoints and a client.
struct Quic {
    node1: Endpoint<BenchProtocol>,
    node2: Endpoint<BenchProtocol>,
    peer_rx2: mpsc::Receiver<PeerMessage<Blob>>,
    client: Arc<Client<BenchProtocol>>,
    echo: tokio::task::JoinHandle<()>,
}

impl Quic {
    async fn start(
        creds1: &Credentials,
        creds2: &Credentials,
        client: &Credentials,
    ) -> Result<Self> {
        let bind = |creds: &Credentials| {
            Endpoint::<BenchProtocol>::bind(EndpointConfig {
                cluster: CLUSTER.into(),
                listen: "127.0.0.1:0".parse().expect("address"),
                credentials: creds.clone(),
                peers: HashMap::new(),
                limits: Limits::default(),
            })
        };
        let (node1, _inbound1) = bind(creds1)?;
        let (node2, inbound2) = bind(creds2)?;
        node1.set_peer_addr(NodeId(2), node2.local_addr()?);
        let mut requests = inbound2.requests;
        let echo = tokio::spawn(async move {
            while let Some(req) = requests.recv().await {
                let _ = req.responder.reply(&req.request);
            }
        });
        let client = Arc::new(Client::new(ClientConfig {
            cluster: CLUSTER.into(),
            bind: "127.0.0.1:0".parse()?,
            credentials: client.clone(),
            nodes: HashMap::from([(NodeId(2), node2.local_addr()?)]),
            limits: Limits::default(),
        })?);
        let mut quic = Quic {
            node1,
            node2,
            peer_rx2: inbound2.peer,
            client,
            echo,
        };
        // Connect before measuring.
        quic.node1.send(NodeId(2), &Blob(vec![1]))?;
        bounded("QUIC warm-up", quic.peer_rx2.recv()).await?;
        Ok(quic)
    }

    async fn one_way(&mut self, payload: &Blob, secs: Duration) -> Result<Rate> {
        let cpu_before = process_cpu();
        let node1 = self.node1.clone();
        let payload = payload.clone();
        let started = Instant::now();
        let sender = tokio::spawn(bounded("QUIC sending", async move {
            let mut sent = 0u64;
            while started.elapsed() < secs {
                node1.send_wait(NodeId(2), &payload).await?;
                sent += 1;
            }
            Ok(sent)
        }));
        count_until_done(started, cpu_before, sender, &mut self.peer_rx2).await
    }

    async fn request_response(&mut self, payload: &Blob, secs: Duration) -> Result<Histogram<u64>> {
        let mut hist = histogram();
        let started = Instant::now();
        while started.elapsed() < secs {
            let t = Instant::now();
            let reply = self.client.request(NodeId(2), payload, STALL).await?;
            hist.record(t.elapsed().as_micros().max(1) as u64)?;
            check_echo(payload, &reply)?;
        }
        Ok(hist)
    }

    async fn concurrent(
        &mut self,
        payload: &Blob,
        secs: Duration,
        concurrency: usize,
    ) -> Result<Concurrent> {
        let client = self.client.clone();
        let payload = Arc::new(payload.clone());
        run_concurrent(concurrency, secs, move || {
            let (client, payload) = (client.clone(), payload.clone());
            async move {
                let reply = client.request(NodeId(2), &payload, STALL).await?;
                check_echo(&payload, &reply)
            }
        })
        .await
    }

    async fn stop(self) {
        self.client.close().await;
        self.node1.shutdown(Duration::from_secs(1)).await;
        self.node2.shutdown(Duration::from_secs(1)).await;
        self.echo.abort();
    }
}

type TlsClient = tokio_rustls::client::TlsStream<TcpStream>;
type TlsServer = tokio_rustls::server::TlsStream<TcpStream>;

/// The baseline: one TLS-over-TCP connection for one-way traffic, one for requests.
struct Tcp {
    frames_tx: mpsc::Sender<Bytes>,
    peer_rx: mpsc::Receiver<Blob>,
    requester: TlsClient,
    pipelined: Arc<Pipelined>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The client side of the pipelined TCP baseline: requests `(id, payload)` to a writer task,
/// callers waiting on their id for the reader task.
struct Pipelined {
    requests_tx: mpsc::Sender<Bytes>,
    waiters: std::sync::Mutex<HashMap<u64, oneshot::Sender<Blob>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Pipelined {
    async fn request(&self, payload: &Blob) -> Result<Blob> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bytes = frame::encode(&(id, payload), Limits::default().max_frame_len)?;
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .insert(id, tx);
        self.requests_tx.send(bytes).await?;
        Ok(bounded("TCP pipelined reply", rx).await??)
    }
}

/// Reads `(id, reply)` frames and wakes each caller.
async fn read_pipelined_replies<S: AsyncRead + Unpin>(mut stream: S, pipelined: Arc<Pipelined>) {
    let mut decoder = FrameDecoder::new(Limits::default().max_frame_len);
    loop {
        match read_chunk(&mut stream).await {
            Ok(Some(chunk)) => decoder.push(chunk),
            Ok(None) | Err(_) => return,
        }
        loop {
            match decoder.next_frame::<(u64, Blob)>() {
                Ok(Some((id, reply))) => {
                    let waiter = match pipelined.waiters.lock() {
                        Ok(mut waiters) => waiters.remove(&id),
                        Err(_) => return,
                    };
                    if let Some(tx) = waiter {
                        let _ = tx.send(reply);
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    eprintln!("TCP baseline: bad reply frame: {error}");
                    return;
                }
            }
        }
    }
}

/// The pipelined TCP server's reader: `(id, request)` frames into the application's queue.
async fn read_pipelined_requests<S: AsyncRead + Unpin>(
    mut stream: S,
    tx: mpsc::Sender<(u64, Blob)>,
) {
    let mut decoder = FrameDecoder::new(Limits::default().max_frame_len);
    loop {
        match read_chunk(&mut stream).await {
            Ok(Some(chunk)) => decoder.push(chunk),
            Ok(None) | Err(_) => return,
        }
        loop {
            match decoder.next_frame::<(u64, Blob)>() {
                Ok(Some(request)) => {
                    if tx.send(request).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    eprintln!("TCP baseline: bad request frame: {error}");
                    return;
                }
            }
        }
    }
}

/// The application side of the pipelined TCP baseline: echo each request to the reply writer.
async fn echo_pipelined(mut rx: mpsc::Receiver<(u64, Blob)>, replies: mpsc::Sender<Bytes>) {
    let max = Limits::default().max_frame_len;
    while let Some((id, request)) = rx.recv().await {
        let Ok(bytes) = frame::encode(&(id, &request), max) else {
            continue;
        };
        if replies.send(bytes).await.is_err() {
            return;
        }
    }
}

async fn tls_pair(
    client: &Credentials,
    server: &Credentials,
    alpn: &[u8],
) -> Result<(TlsClient, TlsServer)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server.rustls_server_config()?));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client.rustls_client_config(alpn)?));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accept = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        acceptor.accept(stream).await
    });
    let stream = bounded("TCP connect", TcpStream::connect(addr)).await??;
    stream.set_nodelay(true)?;
    let name = ServerName::try_from(format!("node-2.{CLUSTER}"))?;
    let client_stream = bounded("TLS handshake", connector.connect(name, stream)).await??;
    let server_stream = bounded("TLS accept", accept).await???;
    Ok((client_stream, server_stream))
}

impl Tcp {
    async fn start(
        creds1: &Credentials,
        creds2: &Credentials,
        client: &Credentials,
    ) -> Result<Self> {
        let (writer_stream, reader_stream) = tls_pair(creds1, creds2, PEER_ALPN).await?;
        let (requester, responder) = tls_pair(client, creds2, CLIENT_ALPN).await?;
        let (pipe_client, pipe_server) = tls_pair(client, creds2, CLIENT_ALPN).await?;
        let (frames_tx, frames_rx) = mpsc::channel(QUEUE);
        let (peer_tx, peer_rx) = mpsc::channel(QUEUE);
        let (request_tx, request_rx) = mpsc::channel(QUEUE);
        let (pipe_client_read, pipe_client_write) = tokio::io::split(pipe_client);
        let (pipe_server_read, pipe_server_write) = tokio::io::split(pipe_server);
        let (requests_tx, requests_rx) = mpsc::channel(QUEUE);
        let (pipe_request_tx, pipe_request_rx) = mpsc::channel(QUEUE);
        let (replies_tx, replies_rx) = mpsc::channel(QUEUE);
        let pipelined = Arc::new(Pipelined {
            requests_tx,
            waiters: std::sync::Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(0),
        });
        let tasks = vec![
            tokio::spawn(write_frames(writer_stream, frames_rx)),
            tokio::spawn(read_frames(reader_stream, peer_tx)),
            tokio::spawn(serve_requests(responder, request_tx)),
            tokio::spawn(echo(request_rx)),
            tokio::spawn(write_frames(pipe_client_write, requests_rx)),
            tokio::spawn(read_pipelined_replies(pipe_client_read, pipelined.clone())),
            tokio::spawn(read_pipelined_requests(pipe_server_read, pipe_request_tx)),
            tokio::spawn(echo_pipelined(pipe_request_rx, replies_tx)),
            tokio::spawn(write_frames(pipe_server_write, replies_rx)),
        ];
        let mut tcp = Tcp {
            frames_tx,
            peer_rx,
            requester,
            pipelined,
            tasks,
        };
        tcp.frames_tx
            .send(frame::encode(
                &Blob(vec![1]),
                Limits::default().max_frame_len,
            )?)
            .await?;
        bounded("TCP warm-up", tcp.peer_rx.recv()).await?;
        Ok(tcp)
    }

    async fn one_way(&mut self, payload: &Blob, secs: Duration) -> Result<Rate> {
        let cpu_before = process_cpu();
        let frames_tx = self.frames_tx.clone();
        let payload = payload.clone();
        let max = Limits::default().max_frame_len;
        let started = Instant::now();
        let sender = tokio::spawn(bounded("TCP sending", async move {
            let mut sent = 0u64;
            while started.elapsed() < secs {
                // Encoded per message, as `Endpoint::send_wait` does.
                let bytes = frame::encode(&payload, max)?;
                frames_tx.send(bytes).await?;
                sent += 1;
            }
            Ok(sent)
        }));
        count_until_done(started, cpu_before, sender, &mut self.peer_rx).await
    }

    async fn request_response(&mut self, payload: &Blob, secs: Duration) -> Result<Histogram<u64>> {
        let max = Limits::default().max_frame_len;
        let mut hist = histogram();
        let mut decoder = FrameDecoder::new(max);
        let started = Instant::now();
        while started.elapsed() < secs {
            let t = Instant::now();
            let bytes = frame::encode(payload, max)?;
            self.requester.write_all(&bytes).await?;
            self.requester.flush().await?;
            let reply: Blob = loop {
                if let Some(reply) = decoder.next_frame()? {
                    break reply;
                }
                let Some(chunk) = bounded("TCP reply", read_chunk(&mut self.requester)).await??
                else {
                    bail!("the TCP server closed the connection");
                };
                decoder.push(chunk);
            };
            hist.record(t.elapsed().as_micros().max(1) as u64)?;
            check_echo(payload, &reply)?;
        }
        Ok(hist)
    }

    async fn concurrent(
        &mut self,
        payload: &Blob,
        secs: Duration,
        concurrency: usize,
    ) -> Result<Concurrent> {
        let pipelined = self.pipelined.clone();
        let payload = Arc::new(payload.clone());
        run_concurrent(concurrency, secs, move || {
            let (pipelined, payload) = (pipelined.clone(), payload.clone());
            async move {
                let reply = pipelined.request(&payload).await?;
                check_echo(&payload, &reply)
            }
        })
        .await
    }

    fn stop(self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

/// The TCP writer: like the QUIC peer writer, gathers queued frames into one write.
async fn write_frames<S: AsyncWrite + Unpin>(stream: S, mut rx: mpsc::Receiver<Bytes>) {
    let mut out = BufWriter::with_capacity(WRITE_BATCH, stream);
    while let Some(first) = rx.recv().await {
        let mut bytes = first.len();
        if out.write_all(&first).await.is_err() {
            return;
        }
        while bytes < WRITE_BATCH {
            let Ok(frame) = rx.try_recv() else { break };
            bytes += frame.len();
            if out.write_all(&frame).await.is_err() {
                return;
            }
        }
        if out.flush().await.is_err() {
            return;
        }
    }
}

/// Bytes asked of one TCP read.
const READ_CHUNK: usize = 64 << 10;

/// Reads what the stream has (up to [`READ_CHUNK`] bytes) into a fresh buffer, which the decoder
/// takes without copying, as it takes QUIC's received chunks; `None` at the end of the stream.
async fn read_chunk<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Option<Bytes>> {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    match stream.read_buf(&mut buf).await? {
        0 => Ok(None),
        _ => Ok(Some(Bytes::from(buf))),
    }
}

/// Reads chunks, decodes frames, hands them to the application (as the QUIC stream reader does).
async fn read_frames<S: AsyncRead + Unpin>(mut stream: S, tx: mpsc::Sender<Blob>) {
    let mut decoder = FrameDecoder::new(Limits::default().max_frame_len);
    loop {
        match read_chunk(&mut stream).await {
            Ok(Some(chunk)) => decoder.push(chunk),
            Ok(None) | Err(_) => return,
        }
        loop {
            match decoder.next_frame::<Blob>() {
                Ok(Some(msg)) => {
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    eprintln!("TCP baseline: bad frame: {error}");
                    return;
                }
            }
        }
    }
}

/// The TCP request server: decode a request, hand it to the application, write its reply.
async fn serve_requests<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    tx: mpsc::Sender<(Blob, oneshot::Sender<Bytes>)>,
) {
    let max = Limits::default().max_frame_len;
    let mut decoder = FrameDecoder::new(max);
    loop {
        let request = loop {
            match decoder.next_frame::<Blob>() {
                Ok(Some(request)) => break request,
                Ok(None) => {}
                Err(_) => return,
            }
            match read_chunk(&mut stream).await {
                Ok(Some(chunk)) => decoder.push(chunk),
                Ok(None) | Err(_) => return,
            }
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        if tx.send((request, reply_tx)).await.is_err() {
            return;
        }
        let Ok(reply) = reply_rx.await else { return };
        if stream.write_all(&reply).await.is_err() || stream.flush().await.is_err() {
            return;
        }
    }
}

/// The application side of the TCP baseline: echo each request (encoded as `Responder` does).
async fn echo(mut rx: mpsc::Receiver<(Blob, oneshot::Sender<Bytes>)>) {
    let max = Limits::default().max_frame_len;
    while let Some((request, reply)) = rx.recv().await {
        if let Ok(bytes) = frame::encode(&request, max) {
            let _ = reply.send(bytes);
        }
    }
}
