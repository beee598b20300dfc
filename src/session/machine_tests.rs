//! The machine's decisions, driven with bytes and a fake edge: no sockets, no tasks.
//! Each test names the client or server behaviour it stands for.

use std::time::Duration;

use super::*;
use crate::config::PassiveTarget;

/// Data ports from a counter; `exhausted` makes every lease fail.
#[derive(Default)]
struct FakeEdge {
    next_port: u16,
    exhausted: bool,
    own: Vec<IpAddr>,
}

impl SessionEdge for FakeEdge {
    type Listener = (ListenerSide, u16);

    fn bind_data_listener(
        &mut self,
        side: ListenerSide,
        _ip: IpAddr,
    ) -> Result<(u16, Self::Listener), LeaseError> {
        if self.exhausted {
            return Err(LeaseError::Exhausted(1000));
        }
        self.next_port += 1;
        let port = 50000 + self.next_port;
        Ok((port, (side, port)))
    }

    fn is_own_address(&self, ip: IpAddr) -> bool {
        self.own.contains(&ip)
    }
}

type M = SessionMachine<FakeEdge>;

struct T {
    m: M,
    now: Instant,
}

const CLIENT: &str = "198.51.100.7";

fn addrs(client: &str) -> Addresses {
    Addresses {
        mode: ListenerMode::Reverse,
        client_ip: client.parse().unwrap(),
        client_local: "203.0.113.10:21".parse().unwrap(),
        backend: "10.0.0.2:21".parse().unwrap(),
        backend_local: "10.0.0.1:40000".parse().unwrap(),
    }
}

fn session_with(client: &str, f: impl FnOnce(&mut Config)) -> T {
    let mut cfg = Config {
        public_address: vec!["203.0.113.10".parse().unwrap()],
        ..Config::default()
    };
    f(&mut cfg);
    let now = Instant::now();
    let m = SessionMachine::new(
        Arc::new(cfg),
        Arc::new(Metrics::new()),
        FakeEdge::default(),
        addrs(client),
        now,
    );
    let mut t = T { m, now };
    t.server("220 ready\r\n");
    assert_eq!(t.take_client(), "220 ready\r\n");
    t
}

fn session(f: impl FnOnce(&mut Config)) -> T {
    session_with(CLIENT, f)
}

fn logged_in(f: impl FnOnce(&mut Config)) -> T {
    let mut t = session(f);
    t.client("USER u\r\nPASS p\r\n");
    assert_eq!(t.take_backend(), "USER u\r\nPASS p\r\n");
    t.server("331 pw\r\n230 ok\r\n");
    assert_eq!(t.take_client(), "331 pw\r\n230 ok\r\n");
    assert!(t.m.logged_in());
    t
}

impl T {
    fn client(&mut self, bytes: &str) {
        self.client_bytes(bytes.as_bytes());
    }

    fn client_bytes(&mut self, bytes: &[u8]) {
        let mut buf = bytes.to_vec();
        self.m.on_client_input(&mut buf, self.now);
        assert!(
            buf.is_empty() || !self.m.wants_client_input(),
            "left unread: {buf:?}"
        );
    }

    fn server(&mut self, bytes: &str) {
        let mut buf = bytes.as_bytes().to_vec();
        self.m.on_server_input(&mut buf, self.now);
    }

    fn take_client(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.m.out.to_client)).unwrap()
    }

    fn take_backend(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.m.out.to_backend)).unwrap()
    }

    fn actions(&mut self) -> Vec<Action<(ListenerSide, u16)>> {
        self.m.take_actions().collect()
    }

    fn opened(&mut self) -> Vec<DataSpec<(ListenerSide, u16)>> {
        self.actions()
            .into_iter()
            .filter_map(|a| match a {
                Action::OpenData(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    fn closed(&mut self) -> Option<Outcome> {
        self.actions().into_iter().find_map(|a| match a {
            Action::Close(o) => Some(o),
            _ => None,
        })
    }

    fn refusals(&self, reason: Refusal) -> u64 {
        self.m
            .metrics
            .refusals_total
            .with_label_values(&[reason.label()])
            .get()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }
}

// ----- bounce checks at the machine level -----

/// Bounce attempts with every address form: refused with the reply in turn, counted,
/// and nothing reaches the backend nor opens a data connection.
#[test]
fn bounce_attempts_are_refused_in_every_address_form() {
    let cases = [
        (
            CLIENT,
            "PORT 203,0,113,9,0,25\r\n",
            "500 Illegal PORT command",
        ),
        (
            CLIENT,
            "EPRT |1|127.0.0.1|22|\r\n",
            "500 Illegal EPRT command",
        ),
        (
            "2001:db8::7",
            "EPRT |2|2001:db8::66|25|\r\n",
            "500 Illegal EPRT command",
        ),
        (
            "2001:db8::7",
            "PORT 198,51,100,7,0,25\r\n",
            "500 Illegal PORT command",
        ),
        // The client on a dual-stack listener is ::ffff:198.51.100.7 in the socket,
        // 198.51.100.7 in its PORT: that is itself, not a bounce.
        (
            "::ffff:198.51.100.7",
            "PORT 198,51,100,7,19,136\r\n",
            "PORT 10,0,0,1,",
        ),
    ];
    for (client, cmd, want) in cases {
        let mut t = session_with(client, |_| {});
        // Addresses are canonical in the machine, as the driver makes them.
        t.m.addrs.client_ip = canonical_ip_of(client);
        t.client(cmd);
        let to_client = t.take_client();
        let to_backend = t.take_backend();
        if want.starts_with("500") {
            assert!(to_client.starts_with(want), "{cmd}: {to_client}");
            assert_eq!(to_backend, "", "{cmd}: nothing reaches the backend");
            assert!(t.opened().is_empty(), "{cmd}: no data connection");
            assert_eq!(t.refusals(Refusal::Bounce), 1, "{cmd}");
        } else {
            assert!(to_backend.starts_with(want), "{cmd}: {to_backend}");
            assert_eq!(t.refusals(Refusal::Bounce), 0);
        }
    }
}

fn canonical_ip_of(s: &str) -> IpAddr {
    crate::protocol::addr::canonical_ip(s.parse().unwrap())
}

/// curl's active mode: PORT naming itself becomes PORT naming ftpgate's backend-side
/// listener, which accepts only the backend; ftpgate connects out to the client.
#[test]
fn port_is_rewritten_to_a_backend_side_listener() {
    let mut t = logged_in(|_| {});
    t.client("PORT 198,51,100,7,19,136\r\n");
    let sent = t.take_backend();
    assert!(sent.starts_with("PORT 10,0,0,1,"), "{sent}");
    let opened = t.opened();
    assert_eq!(opened.len(), 1);
    let d = &opened[0];
    assert_eq!(d.mode, DataMode::Active);
    assert!(
        matches!(d.backend, EndpointSpec::Accept { expect, .. } if expect == "10.0.0.2".parse::<IpAddr>().unwrap())
    );
    assert!(
        matches!(d.client, EndpointSpec::Connect { target, .. } if target == "198.51.100.7:5000".parse().unwrap())
    );
    t.server("200 PORT ok\r\n");
    assert_eq!(t.take_client(), "200 PORT ok\r\n");
}

// ----- EPSV ALL (RFC 2428 §4) -----

#[test]
fn epsv_all_forbids_other_data_commands_afterwards() {
    for mode in [BackendDataMode::Same, BackendDataMode::Active] {
        let mut t = logged_in(|c| c.backend_data_mode = mode);
        t.client("EPSV ALL\r\n");
        if mode == BackendDataMode::Same {
            assert_eq!(
                t.take_backend(),
                "EPSV ALL\r\n",
                "forwarded when the backend stays passive"
            );
            t.server("200 EPSV ALL ok\r\n");
        } else {
            assert_eq!(
                t.take_backend(),
                "",
                "active translation keeps PORT towards the backend"
            );
        }
        assert!(t.take_client().starts_with("200 "));
        for cmd in [
            "PASV",
            "PORT 198,51,100,7,19,136",
            "EPRT |1|198.51.100.7|5000|",
        ] {
            t.client(&format!("{cmd}\r\n"));
            assert_eq!(
                t.take_client(),
                "500 EPSV ALL in effect; only EPSV is allowed.\r\n",
                "{mode:?} {cmd}"
            );
            assert_eq!(t.take_backend(), "");
        }
        assert_eq!(t.refusals(Refusal::EpsvAll), 3);
    }
}

// ----- mode translation -----

/// Passive translation against a server without EPSV (pyftpdlib with EPSV disabled,
/// old servers): EPSV refused, PASV tried, the held RETR released after the 227.
#[test]
fn epsv_refused_falls_back_to_pasv_and_the_transfer_command_waits() {
    let mut t = logged_in(|c| c.backend_data_mode = BackendDataMode::Passive);
    t.client("PORT 198,51,100,7,19,136\r\n");
    assert_eq!(t.take_client(), "200 PORT command successful.\r\n");
    assert_eq!(
        t.take_backend(),
        "",
        "the backend is asked only at the transfer"
    );
    t.client("RETR f\r\nNOOP\r\n");
    assert_eq!(t.take_backend(), "EPSV\r\n", "RETR held, NOOP not read");
    assert!(
        !t.m.wants_client_input(),
        "the client is not read while RETR is held"
    );
    t.server("500 EPSV not understood\r\n");
    assert_eq!(
        t.take_client(),
        "",
        "ftpgate's own command: never shown to the client"
    );
    assert_eq!(t.take_backend(), "PASV\r\n");
    assert!(t.opened().is_empty());
    t.server("227 Entering Passive Mode (10,0,0,2,25,46)\r\n");
    assert_eq!(
        t.take_backend(),
        "RETR f\r\n",
        "released after the setup succeeded"
    );
    let opened = t.opened();
    assert_eq!(opened.len(), 1);
    assert!(
        matches!(opened[0].backend, EndpointSpec::Connect { target, .. } if target == "10.0.0.2:6446".parse().unwrap())
    );
    assert!(
        matches!(opened[0].client, EndpointSpec::Connect { target, .. } if target == "198.51.100.7:5000".parse().unwrap())
    );
    assert!(t.m.wants_client_input());
    // The NOOP the client pipelined goes after RETR; replies come in command order.
    t.client("NOOP\r\n");
    assert_eq!(t.take_backend(), "NOOP\r\n");
    t.server("150 opening\r\n226 done\r\n200 noop\r\n");
    assert_eq!(t.take_client(), "150 opening\r\n226 done\r\n200 noop\r\n");
}

/// A backend that refuses the data setup outright: the client gets a 425 in its stead.
#[test]
fn refused_setup_answers_the_held_command_with_425() {
    let mut t = logged_in(|c| c.backend_data_mode = BackendDataMode::Passive);
    t.client("EPRT |1|198.51.100.7|5000|\r\nLIST\r\n");
    assert_eq!(t.take_client(), "200 EPRT command successful.\r\n");
    assert_eq!(t.take_backend(), "EPSV\r\n");
    t.server("425 no data connections today\r\n");
    assert_eq!(t.take_client(), "425 Can't open data connection.\r\n");
    assert_eq!(t.take_backend(), "", "LIST never reaches the backend");
    assert!(t.m.wants_client_input());
}

/// Active translation: the client's PASV is answered by ftpgate; the backend gets PORT
/// at the transfer command; RETR waits for the PORT's 200.
#[test]
fn active_translation_answers_pasv_and_holds_retr_until_port_is_accepted() {
    let mut t = logged_in(|c| c.backend_data_mode = BackendDataMode::Active);
    t.client("PASV\r\n");
    assert_eq!(t.take_backend(), "");
    let reply = t.take_client();
    assert!(
        reply.starts_with("227 Entering Passive Mode (203,0,113,10,"),
        "{reply}"
    );
    t.client("RETR f\r\n");
    let port = t.take_backend();
    assert!(port.starts_with("PORT 10,0,0,1,"), "{port}");
    t.server("200 PORT ok\r\n");
    assert_eq!(t.take_client(), "");
    assert_eq!(t.take_backend(), "RETR f\r\n");
    let opened = t.opened();
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].mode, DataMode::Passive);
    assert!(
        matches!(opened[0].client, EndpointSpec::Accept { expect, .. } if expect == CLIENT.parse::<IpAddr>().unwrap())
    );
}

// ----- local replies in command order -----

/// lftp pipelines: a refused command between forwarded ones is answered in turn, after
/// the replies owed before it and before those owed after it.
#[test]
fn local_replies_keep_command_order_under_pipelining() {
    let mut t = logged_in(|_| {});
    t.client("PWD\r\nLPSV\r\nSYST\r\nAUTH TLS\r\nNOOP\r\n");
    assert_eq!(t.take_backend(), "PWD\r\nSYST\r\nNOOP\r\n");
    assert_eq!(t.take_client(), "", "LPSV waits for PWD's reply");
    t.server("257 \"/\"\r\n");
    assert_eq!(
        t.take_client(),
        "257 \"/\"\r\n502 Command not implemented; use EPSV or EPRT.\r\n"
    );
    t.server("215-UNIX\r\n");
    assert_eq!(
        t.take_client(),
        "215-UNIX\r\n",
        "not inside a multi-line reply"
    );
    t.server("215 Type: L8\r\n200 ok\r\n");
    assert_eq!(
        t.take_client(),
        "215 Type: L8\r\n502 AUTH is not supported through this gateway.\r\n200 ok\r\n"
    );
}

/// vsftpd's `421-` on shutdown arrives unsolicited and may span lines: a local reply
/// whose turn comes meanwhile waits until the block ends, never splitting it.
#[test]
fn local_replies_never_split_an_unsolicited_multiline_reply() {
    let mut t = logged_in(|_| {});
    t.server("421-Server is going down\r\n");
    assert_eq!(t.take_client(), "421-Server is going down\r\n");
    t.client("LPSV\r\n");
    assert_eq!(t.take_client(), "", "not inside the open block");
    t.server("421 Goodbye\r\n");
    assert_eq!(
        t.take_client(),
        "421 Goodbye\r\n502 Command not implemented; use EPSV or EPRT.\r\n"
    );
}

/// The pipelining bound: past `control.max_pipelined_commands` owed replies the client
/// is not read; lines already read wait in the buffer.
#[test]
fn pipelining_is_bounded() {
    let mut t = logged_in(|c| c.control.max_pipelined_commands = 3);
    let mut buf = b"NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n".to_vec();
    t.m.on_client_input(&mut buf, t.now);
    assert_eq!(t.take_backend(), "NOOP\r\nNOOP\r\nNOOP\r\n");
    assert!(!t.m.wants_client_input());
    assert_eq!(buf, b"NOOP\r\nNOOP\r\n", "unread lines stay");
    t.server("200 a\r\n");
    assert!(t.m.wants_client_input());
    t.m.on_client_input(&mut buf, t.now);
    assert_eq!(t.take_backend(), "NOOP\r\n");
}

// ----- keepalive -----

/// vsftpd during a download: NOOPs only after the 150, only while nothing else is
/// owed, and their replies (after the 226) are swallowed.
#[test]
fn keepalive_runs_only_during_a_transfer_and_replies_are_swallowed() {
    let mut t = logged_in(|c| c.keepalive.noop_interval = Duration::from_secs(60));
    assert_eq!(t.m.next_keepalive(), None);
    t.client("RETR big\r\n");
    t.take_backend();
    assert_eq!(t.m.next_keepalive(), None, "not before the transfer starts");
    t.server("150 opening\r\n");
    t.take_client();
    let due = t.m.next_keepalive().expect("armed during the transfer");
    assert_eq!(due, t.now + Duration::from_secs(60));
    t.advance(Duration::from_secs(60));
    t.m.on_keepalive(t.now);
    assert_eq!(t.take_backend(), "NOOP\r\n");
    assert_eq!(t.m.next_keepalive(), Some(t.now + Duration::from_secs(60)));
    // lftp sends STAT during the transfer: the client now waits for a reply, so no more.
    t.client("STAT\r\n");
    t.take_backend();
    t.advance(Duration::from_secs(60));
    t.m.on_keepalive(t.now);
    assert_eq!(
        t.take_backend(),
        "",
        "no NOOP while the client waits for a reply"
    );
    // proftpd answers NOOP and STAT at once, in order, before the transfer's 226: the
    // 200 belongs to ftpgate's NOOP, the 211 to the client's STAT.
    t.server("200 NOOP ok\r\n211 status\r\n226 done\r\n");
    assert_eq!(t.take_client(), "211 status\r\n226 done\r\n");
    assert_eq!(
        t.m.next_keepalive(),
        None,
        "disarmed when the transfer ends"
    );
}

#[test]
fn keepalive_off_never_arms() {
    let mut t = logged_in(|c| c.keepalive.noop_interval = Duration::ZERO);
    t.client("RETR big\r\n");
    t.server("150 opening\r\n");
    assert_eq!(t.m.next_keepalive(), None);
}

// ----- deadlines -----

/// A client dribbling a few bytes of a line (slowloris on the control port) is idle:
/// only complete commands count as activity.
#[test]
fn partial_lines_do_not_reset_the_idle_clock() {
    let mut t = logged_in(|c| c.timeouts.idle = Duration::from_secs(30));
    let (due, kind) = t.m.next_deadline().unwrap();
    assert_eq!(kind, Deadline::Idle);
    t.advance(Duration::from_secs(20));
    let mut buf = b"NO".to_vec();
    t.m.on_client_input(&mut buf, t.now);
    assert_eq!(
        t.m.next_deadline().unwrap().0,
        due,
        "a partial line is not activity"
    );
    buf.extend_from_slice(b"OP\r\n");
    t.m.on_client_input(&mut buf, t.now);
    assert_eq!(
        t.m.next_deadline(),
        Some((t.now + Duration::from_secs(30), Deadline::Idle)),
        "a complete command is"
    );
    t.server("200 ok\r\n");
    assert_eq!(
        t.m.next_deadline(),
        Some((t.now + Duration::from_secs(30), Deadline::Idle))
    );
}

#[test]
fn login_deadline_runs_from_the_start_until_login() {
    let mut t = session(|c| c.timeouts.login = Duration::from_secs(10));
    let start = t.now;
    t.advance(Duration::from_secs(5));
    t.client("USER u\r\n");
    t.server("331 pw\r\n");
    assert_eq!(t.take_client(), "331 pw\r\n");
    assert_eq!(
        t.m.next_deadline(),
        Some((start + Duration::from_secs(10), Deadline::Login))
    );
    t.advance(Duration::from_secs(5));
    t.m.on_deadline(Deadline::Login, t.now);
    assert_eq!(
        t.take_client(),
        "421 Login timeout; closing control connection.\r\n"
    );
    assert_eq!(t.closed(), Some(Outcome::Timeout));
    assert!(!t.m.wants_client_input());
}

/// A backend that stops answering a LIST: the reply clock runs while a reply is owed
/// and no data connection runs, and ends the session with 421.
#[test]
fn backend_reply_timeout_applies_while_a_reply_is_owed_and_no_data_moves() {
    let mut t = logged_in(|c| {
        c.timeouts.backend_reply = Duration::from_secs(300);
        c.timeouts.idle = Duration::from_secs(900);
    });
    t.advance(Duration::from_secs(100));
    t.client("LIST\r\n");
    assert_eq!(
        t.m.next_deadline(),
        Some((t.now + Duration::from_secs(300), Deadline::BackendReply))
    );
    t.server("150 here it comes\r\n");
    assert_eq!(t.take_client(), "150 here it comes\r\n");
    t.advance(Duration::from_secs(10));
    // A long transfer is progress, however long: no reply deadline while it runs.
    t.m.on_data_event(DataEvent::Started { id: 1 }, t.now);
    assert_eq!(t.m.next_deadline(), None);
    t.advance(Duration::from_secs(3000));
    t.m.on_data_event(
        DataEvent::Finished(super::super::data::Finished {
            id: 1,
            mode: DataMode::Passive,
            client_to_backend: 0,
            backend_to_client: 10,
            duration: Duration::from_secs(3000),
            established: true,
        }),
        t.now,
    );
    assert_eq!(
        t.m.next_deadline(),
        Some((t.now + Duration::from_secs(300), Deadline::BackendReply))
    );
    t.m.on_deadline(Deadline::BackendReply, t.now);
    assert_eq!(
        t.take_client(),
        "421 Server did not answer in time; closing control connection.\r\n"
    );
    assert_eq!(t.closed(), Some(Outcome::Timeout));
}

#[test]
fn backend_reply_timeout_off_when_zero() {
    let mut t = logged_in(|c| {
        c.timeouts.backend_reply = Duration::ZERO;
        c.timeouts.idle = Duration::ZERO;
    });
    t.client("LIST\r\n");
    assert_eq!(t.m.next_deadline(), None);
}

// ----- passive replies -----

#[test]
fn single_line_227_and_229_are_mapped() {
    let mut t = logged_in(|_| {});
    t.client("PASV\r\n");
    t.server("227 Entering Passive Mode (10,0,0,2,25,46).\r\n");
    assert_eq!(
        t.take_client(),
        "227 Entering Passive Mode (203,0,113,10,195,81).\r\n"
    );
    let opened = t.opened();
    assert!(
        matches!(opened[0].backend, EndpointSpec::Connect { target, .. } if target == "10.0.0.2:6446".parse().unwrap())
    );
    t.client("EPSV\r\n");
    t.server("229 Extended (|||6447|)\r\n");
    assert_eq!(t.take_client(), "229 Extended (|||50002|)\r\n");
}

/// A multi-line 227: only the final line is mapped (one port), inner lines pass as
/// text; if the final line cannot be mapped, one 425 replaces the whole block.
#[test]
fn multiline_passive_replies_map_only_the_final_line() {
    let mut t = logged_in(|_| {});
    t.client("PASV\r\n");
    t.server("227-Data at (10,0,0,2,25,46)\r\n227-more text\r\n");
    assert_eq!(t.take_client(), "", "held until the reply ends");
    t.server("227 Entering Passive Mode (10,0,0,2,25,46)\r\n");
    assert_eq!(
        t.take_client(),
        "227-Data at (10,0,0,2,25,46)\r\n227-more text\r\n227 Entering Passive Mode (203,0,113,10,195,81)\r\n"
    );
    assert_eq!(t.opened().len(), 1, "one port for one reply");

    // A 5 000-tuple block leases nothing but the final line's port.
    t.client("PASV\r\n");
    for _ in 0..5000 {
        t.server("227-(10,0,0,2,25,46)\r\n");
    }
    t.server("227 (10,0,0,2,25,46)\r\n");
    assert_eq!(
        t.take_client(),
        "425 Can't open passive connection: reply from server too long.\r\n"
    );
    assert!(t.opened().is_empty());
    assert_eq!(t.refusals(Refusal::PassiveReplyTooLong), 1);

    // Pool exhausted on the final line: the client is not left inside a block.
    t.m.edge.exhausted = true;
    t.client("PASV\r\nNOOP\r\n");
    t.server("227-first\r\n227 Entering Passive Mode (10,0,0,2,25,46)\r\n200 ok\r\n");
    assert_eq!(
        t.take_client(),
        "425 Can't open passive connection: all 1000 data ports are in use.\r\n200 ok\r\n"
    );
}

/// A compromised backend naming ftpgate's loopback service in its 227: ftpgate
/// connects to the backend's control address instead, counts and logs it.
#[test]
fn hostile_227_targets_are_replaced_by_the_control_address() {
    let cases = [
        ("127,0,0,1,30,97", vec![], "10.0.0.2:7777"),
        ("10,0,0,66,0,22", vec![], "10.0.0.2:22"),
        ("10,0,0,66,0,22", vec!["10.0.0.0/24"], "10.0.0.66:22"),
        ("10,0,0,2,0,22", vec![], "10.0.0.2:22"),
    ];
    for (tuple, allow, want) in cases {
        let allow: Vec<ipnet::IpNet> = allow.iter().map(|n| n.parse().unwrap()).collect();
        let mut t = logged_in(|c| {
            c.passive.allow_targets = allow.clone();
            c.passive.target = PassiveTarget::Reply;
        });
        t.client("PASV\r\n");
        t.server(&format!("227 Entering Passive Mode ({tuple})\r\n"));
        let opened = t.opened();
        assert!(
            matches!(opened[0].backend, EndpointSpec::Connect { target, .. } if target == want.parse().unwrap()),
            "{tuple}: {:?}",
            opened[0].backend
        );
        let substituted =
            u64::from(want.starts_with("10.0.0.2:") && !tuple.starts_with("10,0,0,2,"));
        assert_eq!(t.refusals(Refusal::PassiveTarget), substituted, "{tuple}");
    }
}

#[test]
fn unparsable_227_becomes_425() {
    let mut t = logged_in(|_| {});
    t.client("PASV\r\n");
    t.server("227 no tuple here\r\n");
    let r = t.take_client();
    assert!(
        r.starts_with("425 Can't open passive connection: unparsable 227"),
        "{r}"
    );
}

// ----- closing -----

#[test]
fn over_long_line_gets_500_and_closes() {
    let mut t = logged_in(|c| c.control.max_line_length = 16);
    let mut buf = vec![b'A'; 100];
    t.m.on_client_input(&mut buf, t.now);
    assert_eq!(
        t.take_client(),
        "500 Command line too long; closing control connection.\r\n"
    );
    assert_eq!(t.closed(), Some(Outcome::ClientError));
}

#[test]
fn backend_failure_tells_the_client_and_knows_its_side() {
    let mut t = logged_in(|_| {});
    t.m.on_error(&SessionError::BackendRead(
        std::io::ErrorKind::ConnectionReset.into(),
    ));
    assert_eq!(t.take_client(), "421 Connection to server lost.\r\n");
    assert_eq!(t.closed(), Some(Outcome::BackendError));
    let mut t = logged_in(|_| {});
    t.m.on_error(&SessionError::ClientRead(
        std::io::ErrorKind::ConnectionReset.into(),
    ));
    assert_eq!(t.take_client(), "");
    assert_eq!(t.closed(), Some(Outcome::ClientError));
}

#[test]
fn telnet_synch_of_abor_is_marked_urgent() {
    let mut t = logged_in(|_| {});
    t.client("NOOP\r\n");
    t.client_bytes(b"\xff\xf4\xff\xf2ABOR\r\n");
    assert_eq!(t.m.out.urgent_at, Some(6 + 2));
}

// ----- balance: user -----

// ----- balance: user (the routing states) -----

/// A `balance: user` session: ftpgate's own greeting is out, no backend yet.
fn awaiting_user(f: impl FnOnce(&mut Config)) -> T {
    let mut cfg = Config::default();
    f(&mut cfg);
    let now = Instant::now();
    let mut t = T {
        m: SessionMachine::new(
            Arc::new(cfg),
            Arc::new(Metrics::new()),
            FakeEdge::default(),
            addrs(CLIENT),
            now,
        )
        .awaiting_user(),
        now,
    };
    assert_eq!(t.take_client(), "220 ftpgate ready\r\n");
    t
}

impl T {
    /// Client bytes that may stay partly unread (the machine stops at USER).
    fn client_left(&mut self, bytes: &str) -> String {
        let mut buf = bytes.as_bytes().to_vec();
        self.m.on_client_input(&mut buf, self.now);
        String::from_utf8(buf).unwrap()
    }

    fn connect_asked(&mut self) -> Option<String> {
        self.actions().into_iter().find_map(|a| match a {
            Action::ConnectBackend(r) => Some(r.user),
            _ => None,
        })
    }

    fn backend_connected(&mut self) {
        let c = BackendConnected {
            backend: "10.0.0.3:21".parse().unwrap(),
            backend_local: "10.0.0.1:40001".parse().unwrap(),
            tls: false,
        };
        self.m.on_backend_connected(Ok(c), self.now);
    }
}

/// FileZilla probes before logging in, then pipelines the login: ftpgate answers the
/// probes, asks for a backend at USER and reads nothing more until it is ready; the
/// backend's multi-line vsftpd banner is swallowed, USER goes first, the rest follows
/// in order and every reply comes back in order.
#[test]
fn user_routing_asks_for_a_backend_at_user_and_replays_it_after_the_banner() {
    let mut t = awaiting_user(|_| {});
    assert!(t.m.wants_client_input());
    assert_eq!(t.m.next_deadline().map(|(_, k)| k), Some(Deadline::Login));
    let left = t.client_left("NOOP\r\nFEAT\r\nUSER alice\r\nPASS x\r\nPWD\r\n");
    assert_eq!(
        t.take_client(),
        "200 NOOP ok.\r\n530 Please log in with USER first.\r\n"
    );
    assert_eq!(left, "PASS x\r\nPWD\r\n", "held behind USER");
    assert_eq!(t.connect_asked().as_deref(), Some("alice"));
    assert!(!t.m.wants_client_input(), "not read while connecting");
    assert_eq!(t.take_backend(), "");
    t.backend_connected();
    assert_eq!(
        t.take_backend(),
        "",
        "USER waits for the backend's greeting"
    );
    assert!(!t.m.wants_client_input());
    t.server("220-Welcome\r\n220 vsFTPd ready\r\n");
    assert_eq!(t.take_client(), "", "the backend's 220 is swallowed");
    assert_eq!(t.take_backend(), "USER alice\r\n");
    assert!(t.m.wants_client_input());
    assert_eq!(t.client_left(&left), "");
    assert_eq!(t.take_backend(), "PASS x\r\nPWD\r\n");
    t.server("331 pw\r\n230 ok\r\n257 \"/\"\r\n");
    assert_eq!(t.take_client(), "331 pw\r\n230 ok\r\n257 \"/\"\r\n");
    assert!(t.m.logged_in());
}

/// curl `--ssl-reqd` in front of a farm routed by user: AUTH TLS, PBSZ, PROT before
/// USER are ftpgate's to answer; once the backend greets, ftpgate upgrades it itself
/// (mirror: the client is in TLS), protects its data, and only then replays USER, so
/// no login byte crosses to the backend in clear text.
#[test]
fn auth_tls_before_user_upgrades_the_backend_before_user_is_replayed() {
    let mut t = awaiting_user(|c| c.tls.client = Some(crate::config::ClientTlsPolicy::Optional));
    t.client("AUTH TLS\r\n");
    assert!(t.take_client().starts_with("234 "));
    assert!(t
        .actions()
        .iter()
        .any(|a| matches!(a, Action::StartClientTls)));
    assert!(!t.m.wants_client_input());
    t.m.on_client_tls(Ok(()), t.now);
    let left = t.client_left("PBSZ 0\r\nPROT P\r\nUSER alice\r\nPASS x\r\n");
    assert_eq!(
        t.take_client(),
        "200 PBSZ=0\r\n200 Protection level set to P.\r\n"
    );
    assert_eq!(left, "PASS x\r\n");
    assert_eq!(t.connect_asked().as_deref(), Some("alice"));
    t.backend_connected();
    t.server("220 vsFTPd\r\n");
    assert_eq!(t.take_backend(), "AUTH TLS\r\n", "TLS first, USER after");
    t.server("234 Proceed.\r\n");
    assert!(t
        .actions()
        .iter()
        .any(|a| matches!(a, Action::StartBackendTls)));
    assert_eq!(t.take_backend(), "");
    t.m.on_backend_tls(Ok(()), t.now);
    assert_eq!(t.take_backend(), "PBSZ 0\r\nPROT P\r\nUSER alice\r\n");
    t.client_left(&left);
    assert_eq!(t.take_backend(), "PASS x\r\n");
    t.server("200 PBSZ=0\r\n200 PROT now Private.\r\n331 pw\r\n230 ok\r\n");
    assert_eq!(t.take_client(), "331 pw\r\n230 ok\r\n");
    let st = *t.m.tls_state();
    assert!(st.client && st.client_private && st.backend && st.backend_private);
}

/// Every way a routed session fails before the backend is ready: the client hears
/// one 421 that says why, and the session ends with the outcome it counts under.
#[test]
fn routing_failures_end_with_a_421() {
    // No member accepted the connect.
    let mut t = awaiting_user(|_| {});
    t.client_left("USER alice\r\n");
    assert!(t.connect_asked().is_some());
    t.m.on_backend_connected(
        Err(NoUpstream {
            reply: LocalReply::NoBackend,
            outcome: Outcome::BackendUnavailable,
        }),
        t.now,
    );
    assert_eq!(
        t.take_client(),
        "421 Service not available: no backend reachable.\r\n"
    );
    assert_eq!(t.closed(), Some(Outcome::BackendUnavailable));
    // A vsftpd at max_clients greets with 421.
    let mut t = awaiting_user(|_| {});
    t.client_left("USER alice\r\n");
    t.backend_connected();
    t.server("421 There are too many connected users.\r\n");
    assert_eq!(t.take_backend(), "", "USER never sent");
    assert!(t.take_client().starts_with("421 "));
    assert_eq!(t.closed(), Some(Outcome::BackendUnavailable));
}

/// `tls.client: required` under user routing: a clear-text USER is refused before
/// any backend is chosen; QUIT before USER says goodbye and closes.
#[test]
fn before_user_refusals_and_quit_touch_no_backend() {
    let mut t = awaiting_user(|c| c.tls.client = Some(crate::config::ClientTlsPolicy::Required));
    t.client("USER alice\r\n");
    assert!(t.take_client().starts_with("530 TLS required"));
    assert_eq!(t.refusals(Refusal::TlsRequired), 1);
    assert_eq!(t.connect_asked(), None);
    t.client("QUIT\r\n");
    assert_eq!(t.take_client(), "221 Goodbye.\r\n");
    assert_eq!(t.closed(), Some(Outcome::Closed));
}

// ----- drain -----

fn finished(id: u64, established: bool) -> DataEvent {
    DataEvent::Finished(super::super::data::Finished {
        id,
        mode: DataMode::Passive,
        client_to_backend: 0,
        backend_to_client: 10,
        duration: Duration::from_secs(1),
        established,
    })
}

/// An idle lftp session during a rolling update: 421 at once.
#[test]
fn drain_closes_an_idle_session_at_once() {
    let mut t = logged_in(|_| {});
    t.m.on_drain();
    assert!(t.take_client().starts_with("421 "));
    assert_eq!(t.closed(), Some(Outcome::Drained));
}

/// curl mid-RETR: the transfer's 226 reaches the client first, then 421.
#[test]
fn drain_waits_for_a_running_transfers_final_reply() {
    let mut t = logged_in(|_| {});
    t.client("PASV\r\n");
    t.server("227 Entering Passive Mode (10,0,0,2,195,80).\r\n");
    assert!(t.take_client().starts_with("227 "));
    assert_eq!(t.opened().len(), 1);
    t.client("RETR f\r\n");
    t.server("150 go\r\n");
    t.m.on_data_event(DataEvent::Started { id: 1 }, t.now);
    t.m.on_drain();
    assert_eq!(t.take_client(), "150 go\r\n");
    assert_eq!(t.closed(), None, "transfer running: not closed");
    t.server("226 done\r\n");
    assert_eq!(t.closed(), None, "data connection still draining");
    t.m.on_data_event(finished(1, true), t.now);
    let out = t.take_client();
    assert!(out.starts_with("226 done\r\n421 "), "{out:?}");
    assert_eq!(t.closed(), Some(Outcome::Drained));
}

/// Python ftplib got its 227 just before the drain and sends RETR next: honoured.
#[test]
fn drain_honours_a_pending_passive_setup() {
    let mut t = logged_in(|_| {});
    t.client("PASV\r\n");
    t.server("227 Entering Passive Mode (10,0,0,2,195,80).\r\n");
    t.take_client();
    assert_eq!(t.opened().len(), 1);
    t.m.on_drain();
    assert_eq!(t.closed(), None, "the 227 was a promise");
    assert!(t.m.wants_client_input());
    // The client never comes: the mapping times out, and the session closes.
    t.m.on_data_event(finished(1, false), t.now);
    assert!(t.take_client().starts_with("421 "));
    assert_eq!(t.closed(), Some(Outcome::Drained));
}

// ----- FTPS -----

fn with_cert(cfg: &mut Config) {
    cfg.tls.cert = Some("cert.pem".into());
    cfg.tls.key = Some("key.pem".into());
}

fn has(
    actions: &[Action<(ListenerSide, u16)>],
    want: fn(&Action<(ListenerSide, u16)>) -> bool,
) -> bool {
    actions.iter().any(want)
}

/// curl `--ssl-reqd` in front of vsftpd (`tls.backend: mirror`): AUTH goes to the
/// backend, its 234 is held until ftpgate's backend handshake, then the client
/// gets ftpgate's own 234 and its handshake starts. Nothing the client pipelined
/// behind AUTH is read before that.
#[test]
fn curl_auth_tls_mirrors_to_vsftpd() {
    let mut t = session(with_cert);
    t.client("AUTH TLS\r\nUSER sneaky\r\n");
    assert_eq!(t.take_backend(), "AUTH TLS\r\n");
    assert!(
        !t.m.wants_client_input(),
        "client read before its handshake"
    );
    t.server("234 Proceed with negotiation.\r\n");
    assert_eq!(
        t.take_client(),
        "",
        "backend's 234 must wait for the backend handshake"
    );
    let a = t.actions();
    assert!(has(&a, |a| matches!(a, Action::StartBackendTls)));
    t.m.on_backend_tls(Ok(()), t.now);
    assert!(t.take_client().starts_with("234 "));
    assert!(has(&t.actions(), |a| matches!(a, Action::StartClientTls)));
    t.m.on_client_tls(Ok(()), t.now);
    assert!(t.m.wants_client_input());
    // PBSZ/PROT now go to the TLS backend; its 200 to PROT P protects both data sides.
    t.client("PBSZ 0\r\nPROT P\r\n");
    assert_eq!(t.take_backend(), "PBSZ 0\r\nPROT P\r\n");
    t.server("200 PBSZ set to 0.\r\n200 PROT now Private.\r\n");
    assert_eq!(
        t.take_client(),
        "200 PBSZ set to 0.\r\n200 PROT now Private.\r\n"
    );
    assert!(t.m.tls_state().client_private && t.m.tls_state().backend_private);
}

/// TLS offload (`tls.backend: off`): ftpgate answers AUTH, PBSZ and PROT itself;
/// the backend never hears of TLS.
#[test]
fn offload_answers_auth_pbsz_prot_locally() {
    let mut t = session(|c| {
        with_cert(c);
        c.tls.backend = crate::config::BackendTlsPolicy::Off;
    });
    t.client("AUTH TLS\r\n");
    assert!(t.take_client().starts_with("234 "));
    assert_eq!(t.take_backend(), "");
    assert!(has(&t.actions(), |a| matches!(a, Action::StartClientTls)));
    t.m.on_client_tls(Ok(()), t.now);
    t.client("PBSZ 0\r\nPROT P\r\nCCC\r\n");
    assert_eq!(t.take_client(), "200 PBSZ=0\r\n200 Protection level set to P.\r\n502 CCC not permitted through this gateway.\r\n");
    assert_eq!(t.take_backend(), "");
    assert_eq!(
        data_tls(t.m.tls_state()),
        DataTls {
            client: true,
            backend: false
        }
    );
}

/// Without a certificate, AUTH keeps today's 502, so clients that only prefer TLS
/// carry on in clear text.
#[test]
fn no_certificate_keeps_502_for_auth() {
    let mut t = session(|_| {});
    t.client("AUTH TLS\r\n");
    assert!(t.take_client().starts_with("502 "));
    assert!(t.m.wants_client_input());
    assert_eq!(t.refusals(Refusal::AuthTls), 1);
}

/// `tls.backend: required` behind a clear client: ftpgate sends AUTH TLS after the
/// backend's 220 and holds the client's USER until the handshake; PBSZ/PROT replies
/// are swallowed, the client sees only its own replies.
#[test]
fn required_backend_upgrade_is_invisible_to_a_clear_client() {
    let mut t = session_with(CLIENT, |c| {
        c.tls.backend = crate::config::BackendTlsPolicy::Required
    });
    assert_eq!(t.take_backend(), "AUTH TLS\r\n");
    assert!(!t.m.wants_client_input());
    t.server("234 Proceed.\r\n");
    assert!(has(&t.actions(), |a| matches!(a, Action::StartBackendTls)));
    t.m.on_backend_tls(Ok(()), t.now);
    assert_eq!(t.take_backend(), "PBSZ 0\r\nPROT P\r\n");
    assert!(t.m.wants_client_input());
    t.client("USER u\r\n");
    assert_eq!(t.take_backend(), "USER u\r\n");
    t.server("200 PBSZ=0\r\n200 PROT now Private.\r\n331 pw\r\n");
    assert_eq!(t.take_client(), "331 pw\r\n");
    assert!(t.m.tls_state().backend_private);
}

/// A backend that refuses ftpgate's own AUTH TLS under `required`: 421.
#[test]
fn required_backend_refusing_auth_gets_421() {
    let mut t = session_with(CLIENT, |c| {
        c.tls.backend = crate::config::BackendTlsPolicy::Required
    });
    t.take_backend();
    t.server("530 Please login with USER and PASS.\r\n");
    assert!(t.take_client().starts_with("421 "));
    assert_eq!(t.closed(), Some(Outcome::BackendError));
}

/// pyftpdlib's plain handler lists no FTPS features: ftpgate adds them before the
/// final line of the backend's FEAT.
#[test]
fn feat_gains_auth_tls_pbsz_prot() {
    let mut t = session(with_cert);
    t.client("FEAT\r\n");
    t.server("211-Features:\r\n EPSV\r\n211 End\r\n");
    assert_eq!(
        t.take_client(),
        "211-Features:\r\n EPSV\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n211 End\r\n"
    );
}

/// ftplib's urgent ABOR: inside TLS to the backend there is no urgent data; the
/// command goes in band.
#[test]
fn abor_inside_backend_tls_sends_no_urgent_byte() {
    let mut t = logged_in(with_cert);
    t.m.set_initial_tls(TlsState {
        client: true,
        backend: true,
        ..TlsState::default()
    });
    t.client("NOOP\r\n");
    t.client_bytes(b"\xff\xf4\xff\xf2ABOR\r\n");
    assert_eq!(t.m.out.urgent_at, None);
}

/// `tls.client: required`: vsftpd's `force_local_logins_ssl` behaviour at the gateway.
#[test]
fn required_client_refuses_clear_login() {
    let mut t = session(|c| {
        with_cert(c);
        c.tls.client = Some(crate::config::ClientTlsPolicy::Required);
    });
    t.client("USER u\r\n");
    assert!(t.take_client().starts_with("530 "));
    assert_eq!(t.take_backend(), "");
}

/// A LAN client's FTPS through the transparent gateway: AUTH goes to the server, its
/// 234 reaches the client, and the control connection becomes opaque.
#[test]
fn transparent_auth_tls_becomes_passthrough() {
    let cfg = Config::default();
    let mut a = addrs(CLIENT);
    a.mode = ListenerMode::Transparent;
    let now = Instant::now();
    let m = SessionMachine::new(
        Arc::new(cfg),
        Arc::new(Metrics::new()),
        FakeEdge::default(),
        a,
        now,
    );
    let mut t = T { m, now };
    t.server("220 ready\r\n");
    t.take_client();
    t.client("AUTH TLS\r\n");
    assert_eq!(t.take_backend(), "AUTH TLS\r\n");
    assert!(!t.m.wants_client_input());
    t.server("234 Proceed.\r\n");
    assert_eq!(t.take_client(), "234 Proceed.\r\n");
    assert!(has(&t.actions(), |a| matches!(a, Action::Passthrough)));
}

/// pyftpdlib resets a TLS data connection whose ClientHello arrives before it
/// processed RETR: the backend's 150 is what lets the data task handshake.
#[test]
fn transfer_preliminary_reply_is_announced() {
    let mut t = logged_in(|_| {});
    t.client("PASV\r\n");
    t.server("227 Entering Passive Mode (10,0,0,2,195,80).\r\n");
    t.actions();
    t.client("RETR f\r\n");
    assert!(!has(&t.actions(), |a| matches!(
        a,
        Action::TransferPreliminary
    )));
    t.server("150 Opening data connection.\r\n");
    assert!(has(&t.actions(), |a| matches!(
        a,
        Action::TransferPreliminary
    )));
    // A 1xx to anything else (a misbehaving server) is not a transfer starting.
    t.client("NOOP\r\n");
    t.server("226 done\r\n120 later\r\n200 ok\r\n");
    assert!(!has(&t.actions(), |a| matches!(
        a,
        Action::TransferPreliminary
    )));
}

/// `tls.backend_data: private`: whatever the client's PROT, the backend's data is
/// protected; the client's PBSZ/PROT are answered by ftpgate.
#[test]
fn backend_data_private_keeps_farm_data_encrypted() {
    let mut t = session(|c| {
        with_cert(c);
        c.tls.backend_data = crate::config::BackendDataProtection::Private;
    });
    t.client("AUTH TLS\r\n");
    assert_eq!(t.take_backend(), "AUTH TLS\r\n");
    t.server("234 Proceed.\r\n");
    t.actions();
    t.m.on_backend_tls(Ok(()), t.now);
    assert_eq!(t.take_backend(), "PBSZ 0\r\nPROT P\r\n");
    t.m.on_client_tls(Ok(()), t.now);
    t.server("200 PBSZ=0\r\n200 PROT now Private.\r\n");
    assert!(t.take_client().starts_with("234 "));
    t.client("PBSZ 0\r\nPROT C\r\n");
    assert_eq!(t.take_backend(), "");
    assert_eq!(
        t.take_client(),
        "200 PBSZ=0\r\n200 Protection level set to C.\r\n"
    );
    assert_eq!(
        data_tls(t.m.tls_state()),
        DataTls {
            client: false,
            backend: true
        }
    );
}
