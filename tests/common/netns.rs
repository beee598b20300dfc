//! Network namespaces, veth links and L2 segments for end-to-end tests.
//!
//! A [`Topology`] owns every namespace it creates and every process spawned
//! through it. Dropping it (also while unwinding from a failed assertion)
//! kills those processes, then every other process still inside one of its
//! namespaces (e.g. an FTP daemon's per-session children), then deletes the
//! namespaces, which also destroys their veth interfaces.
//!
//! Names: namespaces are called `ftpgate-t-<pid>-<n>-<role>`, unique across
//! concurrently running tests and test binaries. Interfaces are created
//! directly inside their namespaces (`ip link add ... netns X ... peer ...
//! netns Y`), so their names (max 15 chars) only have to be unique within one
//! namespace and never clash in the root namespace.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Prefix of every namespace the harness creates; `scripts/test.sh` removes
/// leftovers with this prefix whose owning test process no longer exists.
pub const NETNS_PREFIX: &str = "ftpgate-t-";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `cmd` to completion with a deadline; on timeout the process is killed.
/// Returns the captured output plus whether the deadline hit.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> (Output, bool) {
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().expect("wait after kill");
            }
            // Polling the child's exit status, not waiting for readiness.
            None => thread::sleep(Duration::from_millis(10)),
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    (
        Output {
            status,
            stdout,
            stderr,
        },
        timed_out,
    )
}

/// Runs a setup command (bounded to 30 s) and panics with its output if it fails.
pub fn run_ok(cmd: Command) -> Output {
    let desc = format!("{cmd:?}");
    let (out, timed_out) = run_bounded(cmd, Duration::from_secs(30));
    if timed_out || !out.status.success() {
        panic!(
            "command failed{}: {desc}\nstatus: {:?}\nstdout: {}\nstderr: {}",
            if timed_out { " (timed out)" } else { "" },
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn ip(args: &[&str]) -> Output {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run_ok(cmd)
}

/// A handle on one namespace of a [`Topology`]; cheap to clone. It does not
/// own the namespace: the topology deletes it.
#[derive(Clone, Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside this namespace.
    /// `ip netns exec` execs the program after `setns`, so the spawned pid is
    /// the program itself and killing it kills the program.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program args...` in the namespace; panics on failure.
    pub fn run_ok(&self, program: &str, args: &[&str]) -> Output {
        let mut cmd = self.command(program);
        cmd.args(args);
        run_ok(cmd)
    }

    /// `ip -n <ns> args...`; panics on failure.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Adds an address (CIDR) to `dev`. IPv6 addresses skip duplicate address
    /// detection, so they are usable at once instead of staying "tentative".
    pub fn addr(&self, dev: &str, cidr: &str) {
        if cidr.contains(':') {
            self.ip(&["addr", "add", cidr, "dev", dev, "nodad"]);
        } else {
            self.ip(&["addr", "add", cidr, "dev", dev]);
        }
    }

    /// `ip route add <args...>` inside the namespace.
    pub fn route(&self, args: &[&str]) {
        let mut full = vec!["route", "add"];
        full.extend_from_slice(args);
        self.ip(&full);
    }

    /// Sets a sysctl inside the namespace (net.* sysctls are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.run_ok("sysctl", &["-q", "-w", &format!("{key}={value}")]);
    }

    /// Runs `f` on a new thread whose network namespace is this one, so
    /// in-process sockets (`std::net`) live in the namespace. Only the
    /// calling thread changes namespace (setns with CLONE_NEWNET is
    /// per-thread); the rest of the test process is unaffected.
    pub fn spawn_thread<T, F>(&self, f: F) -> thread::JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let path = format!("/var/run/netns/{}", self.name);
        thread::spawn(move || {
            enter_netns(&path);
            f()
        })
    }
}

const CLONE_NEWNET: std::os::raw::c_int = 0x4000_0000;

extern "C" {
    // glibc's setns(2) wrapper; std already links libc, so no crate is needed.
    fn setns(fd: std::os::raw::c_int, nstype: std::os::raw::c_int) -> std::os::raw::c_int;
}

#[allow(unsafe_code)]
fn enter_netns(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: `file` is an open namespace file descriptor for the duration of
    // the call; setns only changes the calling thread's network namespace.
    let rc = unsafe { setns(file.as_raw_fd(), CLONE_NEWNET) };
    if rc != 0 {
        panic!("setns({path}): {}", std::io::Error::last_os_error());
    }
}

/// An L2 segment: a namespace holding a bridge `br0`; hosts attach to it with
/// a veth whose switch-side end becomes a bridge port. Models a LAN where
/// more hosts (e.g. an attacker) can be added later.
#[derive(Clone, Debug)]
pub struct Segment {
    pub ns: Netns,
    ports: Arc<AtomicU32>,
}

/// A set of namespaces and processes, torn down on drop.
pub struct Topology {
    prefix: String,
    namespaces: Mutex<Vec<Netns>>,
    children: Mutex<Vec<Child>>,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Topology {
    pub fn new() -> Topology {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        Topology {
            prefix: format!("{NETNS_PREFIX}{}-{n}", std::process::id()),
            namespaces: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
        }
    }

    /// Creates a namespace named after `role` with `lo` up.
    pub fn add_ns(&self, role: &str) -> Netns {
        let ns = Netns {
            name: format!("{}-{role}", self.prefix),
        };
        ip(&["netns", "add", &ns.name]);
        // Register before any further step can panic, so Drop deletes it.
        self.namespaces.lock().unwrap().push(ns.clone());
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A point-to-point veth between `a`/`a_if` and `b`/`b_if`, both up.
    pub fn link(&self, a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
        ip(&[
            "link", "add", "name", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if,
            "netns", &b.name,
        ]);
        a.ip(&["link", "set", a_if, "up"]);
        b.ip(&["link", "set", b_if, "up"]);
    }

    /// Creates an L2 segment (bridge in its own namespace).
    pub fn segment(&self, role: &str) -> Segment {
        let ns = self.add_ns(role);
        // No STP and no forwarding delay: ports forward as soon as they are up.
        ns.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        ns.ip(&["link", "set", "br0", "up"]);
        Segment {
            ns,
            ports: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Connects `host` to `seg` with interface `host_if` (up, no address yet).
    pub fn attach(&self, seg: &Segment, host: &Netns, host_if: &str) {
        let port = format!("p{}", seg.ports.fetch_add(1, Ordering::SeqCst));
        self.link(host, host_if, &seg.ns, &port);
        seg.ns.ip(&["link", "set", &port, "master", "br0"]);
    }

    /// Spawns `cmd` (typically from [`Netns::command`]) and keeps it so Drop
    /// kills it. Returns its pid.
    pub fn spawn(&self, mut cmd: Command) -> u32 {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// If the tracked process `pid` has exited, its status.
    pub fn exit_status(&self, pid: u32) -> Option<std::process::ExitStatus> {
        let mut children = self.children.lock().unwrap();
        let child = children.iter_mut().find(|c| c.id() == pid)?;
        child.try_wait().ok().flatten()
    }

    /// Names of this topology's namespaces.
    pub fn namespaces(&self) -> Vec<Netns> {
        self.namespaces.lock().unwrap().clone()
    }
}

/// Kills every process inside namespace `name` (SIGKILL) and waits, bounded,
/// until none is left. Covers daemons' forked per-session children that the
/// harness never had a handle on.
pub fn kill_all_in_netns(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        let _ = Command::new("kill")
            .arg("-9")
            .args(&pids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Polling until the kernel has reaped them (bounded by `deadline`).
        thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Never panic here: this runs while unwinding from failed assertions.
        if let Ok(mut children) = self.children.lock() {
            for child in children.iter_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let namespaces = match self.namespaces.lock() {
            Ok(ns) => ns.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        for ns in namespaces.iter().rev() {
            kill_all_in_netns(&ns.name);
        }
        for ns in namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns.name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
