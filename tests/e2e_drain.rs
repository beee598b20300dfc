//! Graceful drain end to end (issue 13): ftpgate as a process in front of a real
//! vsftpd, transfers through rate-limited links, `SIGTERM` in the middle.
//!
//! Two 64 MiB downloads (curl) over a backend uplink shaped to 8 MiB/s (about 16 s for
//! both: slow enough that `SIGTERM` lands mid-transfer, which the test checks, fast
//! enough for the run to stay well under a minute) and one 8 MiB upload over a client
//! uplink shaped to 1 MiB/s run while one session sits idle. On `SIGTERM` the idle
//! session must get `421` at once, a new connection must be refused, the transfers
//! must complete byte-exact (curl succeeds only on `226`), and ftpgate must exit 0
//! after the last session.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::clients::{self, FtpControl, FtpTarget, Passive};
use common::firewall;
use common::servers::{upload_source, write_random_file, ServerKind, FTP_PASS, FTP_USER};
use common::{sha256_file, ReverseTopology};

/// Every wait in this test is bounded by this.
const BOUND: Duration = Duration::from_secs(60);
/// The downloads' size (issue 13: 64 MiB through a rate-limited link).
const DOWNLOAD_LEN: usize = 64 * 1024 * 1024;
/// The downloaded file, relative to the login directory.
const DOWNLOAD: &str = "pub/drain-64m.bin";

/// Waits (bounded) until `path` holds at least one byte: the transfer is running.
fn wait_growing(path: &std::path::Path) {
    let until = Instant::now() + BOUND;
    while std::fs::metadata(path).map_or(0, |m| m.len()) == 0 {
        assert!(Instant::now() < until, "{} never grew", path.display());
        // Polling a file size: the only progress signal curl gives (bounded above).
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_lets_transfers_finish_and_closes_idle_sessions() {
    if !common::e2e_enabled("sigterm_lets_transfers_finish_and_closes_idle_sessions") {
        return;
    }
    let topo = ReverseTopology::new();
    firewall::slow_uplink(&topo.backend, "eth0", 8 * 1024 * 1024);
    firewall::slow_uplink(&topo.client, "eth0", 1024 * 1024);
    let server = topo.start_backend(ServerKind::Vsftpd);
    let download = server.root.path().join(DOWNLOAD);
    write_random_file(&download, DOWNLOAD_LEN);
    let want_down = sha256_file(&download);
    let mut options = topo.ftpgate_options(topo.backend_addr());
    options.log_level = "info".into();
    let mut gate = topo.start_ftpgate(options);
    let target = FtpTarget::new(topo.proxy_v4());
    let work = tempfile::tempdir().unwrap();
    let upload = upload_source(work.path());
    let ctx = || format!("{}\n--- vsftpd ---\n{}", gate.describe(), server.logs());

    // The idle session: logged in, then waits for what ftpgate says.
    let (idle_tx, idle_rx) = mpsc::channel();
    let addr = topo.proxy_v4();
    let idle = topo.client.spawn_thread(move || {
        let mut c = FtpControl::connect(addr).expect("idle connect");
        c.login(FTP_USER, FTP_PASS).expect("idle login");
        idle_tx.send(()).unwrap();
        let reply = c.read_reply();
        (reply, Instant::now())
    });
    idle_rx.recv_timeout(BOUND).expect("idle session logged in");

    let (client, server_ref) = (&topo.client, &server);
    std::thread::scope(|s| {
        let downloads: Vec<_> = (0..2)
            .map(|i| {
                let local = work.path().join(format!("down-{i}.bin"));
                let (l, t) = (local.clone(), &target);
                let h =
                    s.spawn(move || clients::curl_download(client, t, DOWNLOAD, &l, Passive::Epsv));
                (local, h)
            })
            .collect();
        let src = &upload;
        let t = &target;
        let up = s.spawn(move || {
            clients::curl_upload(client, t, src, "upload/drained.bin", Passive::Epsv)
        });
        for (local, _) in &downloads {
            wait_growing(local);
        }
        wait_growing(&server_ref.root.uploaded("drained.bin"));

        let term_at = Instant::now();
        gate.signal("TERM");
        for (local, _) in &downloads {
            let at_term = std::fs::metadata(local).map_or(0, |m| m.len());
            assert!(
                at_term < DOWNLOAD_LEN as u64,
                "SIGTERM after {} finished: not a drain mid-transfer\n{}",
                local.display(),
                ctx()
            );
        }

        let (reply, at) = idle.join().unwrap();
        let (code, text) = reply.unwrap_or_else(|e| panic!("idle session: {e}\n{}", ctx()));
        assert_eq!(code, 421, "idle session got {text:?}\n{}", ctx());
        assert!(
            at.duration_since(term_at) < Duration::from_secs(5),
            "the idle session is told at once, not after the transfers\n{}",
            ctx()
        );
        // Listeners are closed: the next connect is refused.
        let refused = client
            .spawn_thread(move || FtpControl::connect(addr).is_err())
            .join()
            .unwrap();
        assert!(refused, "new connections refused while draining\n{}", ctx());

        for (local, h) in downloads {
            h.join().unwrap().assert_success(&ctx());
            assert_eq!(sha256_file(&local), want_down, "{}", ctx());
        }
        up.join().unwrap().assert_success(&ctx());
    });
    assert_eq!(
        sha256_file(&server.root.uploaded("drained.bin")),
        sha256_file(&upload),
        "{}",
        ctx()
    );
    let status = gate.wait_exit(BOUND);
    let logs = format!("{}\n--- vsftpd ---\n{}", gate.describe(), server.logs());
    assert!(
        status.is_some_and(|s| s.success()),
        "exit 0 after the last session: {status:?}\n{logs}"
    );
}
