//! Servers: in-process tasks or pinned child processes, stopped on drop or on a signal.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::transport::Channel;

/// The server processes started and not yet reaped, for [`stop_servers_on_signal`].
static SERVER_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn server_pids() -> std::sync::MutexGuard<'static, Vec<u32>> {
    SERVER_PIDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A child process killed when dropped, or when the harness is interrupted, where no
/// destructor runs (the no-op also exits when its stdin closes; the service has no such
/// hook, and outlived an interrupted harness before).
pub(crate) struct ChildGuard(Child);
impl ChildGuard {
    pub(crate) fn new(child: Child) -> Self {
        server_pids().push(child.id());
        Self(child)
    }
}
impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        // Unlisted before it is reaped: until then its pid cannot be reused.
        server_pids().retain(|&pid| pid != self.0.id());
        let _ = self.0.wait();
    }
}

/// On SIGINT, SIGTERM or SIGHUP: stops the server processes and exits. On a thread and a
/// runtime of its own, so a busy load generator cannot hold it up.
pub(crate) fn stop_servers_on_signal() {
    std::thread::spawn(|| {
        use tokio::signal::unix::{SignalKind, signal};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("signal runtime");
        let (name, code) = runtime.block_on(async {
            let listen = |kind| signal(kind).expect("signal handler");
            let mut interrupt = listen(SignalKind::interrupt());
            let mut terminate = listen(SignalKind::terminate());
            let mut hangup = listen(SignalKind::hangup());
            tokio::select! {
                _ = interrupt.recv() => ("SIGINT", 130),
                _ = terminate.recv() => ("SIGTERM", 143),
                _ = hangup.recv() => ("SIGHUP", 129),
            }
        });
        let pids = server_pids().clone();
        for pid in &pids {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        eprintln!("bench: {name}: stopped {} server process(es)", pids.len());
        std::process::exit(code);
    });
}

pub(crate) enum Running {
    Task(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ),
    Process(ChildGuard),
    Noop(tokio::task::JoinHandle<()>),
}

pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) running: Running,
}

impl Server {
    pub(crate) fn pid(&self) -> Option<u32> {
        match &self.running {
            Running::Process(child) => Some(child.0.id()),
            _ => None,
        }
    }
    /// Peak resident set of the server process (VmHWM), in KiB.
    pub(crate) fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }
    pub(crate) async fn stop(self) {
        match self.running {
            Running::Task(stop, handle) => {
                let _ = stop.send(());
                let _ = handle.await;
            }
            Running::Process(child) => drop(child),
            Running::Noop(handle) => handle.abort(),
        }
    }
}

pub(crate) fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

pub(crate) fn pinned(program: &Path, core: Option<usize>) -> Command {
    match core {
        Some(core) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(core.to_string()).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Polls the readiness entry until SERVING (the server is a separate process: nothing else
/// tells us when its background migration check is done).
pub(crate) async fn wait_ready(addr: SocketAddr) {
    use tonic_health::pb::health_client::HealthClient;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
        {
            let mut health = HealthClient::new(channel);
            if let Ok(r) = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "invitations.v1.InvitationService".into(),
                })
                .await
                && r.get_ref().status == 1
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the service at {addr} did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn pin_self_to_core_1() {
    let pid = std::process::id().to_string();
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &pid])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("could not pin the load generator to core 1");
    }
}
