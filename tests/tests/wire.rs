//! The request path's lean NATS connection against a real nats-server: what it sends is what
//! async-nats receives and the other way round, queue groups, "no responders", flush, a server
//! restart, credentials, and a close that sends what was queued.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use busgate_shared::wire::{Connection, Msg, PublishError};
use busgate_tests::support::{eventually, NatsServer, Proc};
use futures::StreamExt;
use tokio::sync::mpsc;

const WITHIN: Duration = Duration::from_secs(10);

async fn connected(url: &str) -> Connection {
    let wire = Connection::connect(url, "wire test").expect("url");
    assert!(wire.connected(WITHIN).await, "connects to {url}");
    wire
}

/// Returns once the server has processed everything `client` sent before: async-nats' `flush`
/// only empties its own buffer, while a request nobody serves is answered by the server itself.
async fn round_trip(client: &async_nats::Client) {
    let asked = client.request("nobody.serves.this", "".into());
    let answer = tokio::time::timeout(WITHIN, asked).await.expect("in time");
    assert!(answer.is_err(), "no responders");
}

/// A subscription whose messages arrive on a channel.
fn subscribe(
    wire: &Connection,
    subject: &str,
    queue: Option<&str>,
) -> (
    busgate_shared::wire::Subscription,
    mpsc::UnboundedReceiver<Msg>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = wire
        .subscribe(subject, queue, move |m| {
            let _ = tx.send(m);
        })
        .expect("subscribe");
    (sub, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Msg>) -> Msg {
    tokio::time::timeout(WITHIN, rx.recv())
        .await
        .expect("a message in time")
        .expect("subscription open")
}

#[tokio::test]
async fn messages_and_headers_cross_to_async_nats_and_back() {
    let nats = NatsServer::start();
    let wire = connected(&nats.url).await;
    let client = nats.client().await;

    // wire → async-nats, with headers and a reply subject.
    let mut theirs = client.subscribe("to.client").await.expect("sub");
    round_trip(&client).await;
    wire.publish(
        "to.client",
        Some("back.here"),
        &[("Busgate-Deadline", "123"), ("traceparent", "00-ab-cd-00")],
        b"{\"x\":1}",
    )
    .expect("publish");
    let got = tokio::time::timeout(WITHIN, theirs.next())
        .await
        .expect("in time")
        .expect("message");
    assert_eq!(&got.payload[..], b"{\"x\":1}");
    assert_eq!(got.reply.as_deref(), Some("back.here"));
    let headers = got.headers.expect("headers");
    assert_eq!(
        headers.get("Busgate-Deadline").map(|v| v.as_str()),
        Some("123")
    );
    assert_eq!(
        headers.get("traceparent").map(|v| v.as_str()),
        Some("00-ab-cd-00")
    );

    // async-nats → wire, with headers; then without.
    let (_sub, mut ours) = subscribe(&wire, "to.wire.>", None);
    wire.flush(WITHIN).await.expect("flush");
    let mut h = async_nats::HeaderMap::new();
    h.insert("Busgate-Client", "acme");
    client
        .publish_with_reply_and_headers("to.wire.a", "r.1", h, "hello".into())
        .await
        .expect("publish");
    client
        .publish("to.wire.b", "".into())
        .await
        .expect("publish");
    let a = next(&mut ours).await;
    assert_eq!((a.subject(), a.reply()), ("to.wire.a", Some("r.1")));
    assert_eq!(a.header("busgate-client"), Some("acme"));
    assert_eq!((&a.payload[..], a.status()), (&b"hello"[..], None));
    let b = next(&mut ours).await;
    assert_eq!(
        (b.subject(), b.reply(), b.headers.is_none()),
        ("to.wire.b", None, true)
    );
    assert!(b.payload.is_empty());

    // A request nobody serves: the bus answers 503 on the reply subject at once.
    let (_inbox, mut replies) = subscribe(&wire, "_INBOX.t.>", None);
    wire.flush(WITHIN).await.expect("flush");
    wire.publish("nobody.home", Some("_INBOX.t.1"), &[("a", "b")], b"?")
        .expect("publish");
    let status = next(&mut replies).await;
    assert_eq!(
        (status.subject(), status.status()),
        ("_INBOX.t.1", Some(503))
    );

    // Refused before anything is written.
    assert_eq!(
        wire.publish("a b", None, &[], b""),
        Err(PublishError::InvalidSubject)
    );
    assert_eq!(
        wire.publish("a", None, &[("x", "1\r\nInjected: yes")], b""),
        Err(PublishError::InvalidHeader)
    );
    let big = vec![b'x'; 2 * 1024 * 1024];
    assert_eq!(
        wire.publish("a", None, &[], &big),
        Err(PublishError::TooLarge)
    );
}

#[tokio::test]
async fn a_queue_group_shares_and_an_unsubscribed_callback_gets_nothing() {
    let nats = NatsServer::start();
    let wire = connected(&nats.url).await;
    let counts = Arc::new(Mutex::new([0usize; 2]));
    let subs: Vec<_> = (0..2)
        .map(|i| {
            let counts = counts.clone();
            wire.subscribe("work", Some("workers"), move |_| {
                counts.lock().expect("lock")[i] += 1;
            })
            .expect("subscribe")
        })
        .collect();
    // Publishes `n` and waits until the members together have taken `total`.
    let work = |n: usize, total: usize| {
        let (wire, counts) = (&wire, &counts);
        async move {
            wire.flush(WITHIN).await.expect("flush");
            for _ in 0..n {
                wire.publish("work", None, &[], b"w").expect("publish");
            }
            wire.flush(WITHIN).await.expect("flush");
            eventually(WITHIN, || {
                let c = *counts.lock().expect("lock");
                async move { c[0] + c[1] == total }
            })
            .await;
        }
    };
    work(200, 200).await;
    let c = *counts.lock().expect("lock");
    assert!(c[0] > 0 && c[1] > 0, "both members took work: {c:?}");

    let mut subs = subs.into_iter();
    subs.next().expect("first").unsubscribe();
    work(50, 250).await;
    assert_eq!(
        counts.lock().expect("lock")[0],
        c[0],
        "no message after unsubscribe"
    );
}

#[tokio::test]
async fn a_restarted_server_is_reconnected_to_and_subscriptions_come_back() {
    let nats = NatsServer::start();
    let url = nats.url.clone();
    let wire = connected(&url).await;
    let (_sub, mut rx) = subscribe(&wire, "again", None);
    wire.flush(WITHIN).await.expect("flush");
    wire.publish("again", None, &[], b"1").expect("publish");
    assert_eq!(&next(&mut rx).await.payload[..], b"1");

    let (dir, port) = nats.stop();
    eventually(WITHIN, || {
        let down = !wire.is_connected();
        async move { down }
    })
    .await;
    assert_eq!(
        wire.publish("again", None, &[], b"lost"),
        Err(PublishError::NotConnected),
        "a publish while down fails at once"
    );
    assert!(wire.flush(WITHIN).await.is_err());

    let _nats = NatsServer::start_in(dir, port);
    assert!(wire.connected(WITHIN).await, "reconnects");
    assert_eq!(wire.connects(), 2);
    wire.flush(WITHIN).await.expect("flush");
    wire.publish("again", None, &[], b"2").expect("publish");
    assert_eq!(&next(&mut rx).await.payload[..], b"2", "resubscribed");
}

#[tokio::test]
async fn credentials_in_the_url_are_used_and_wrong_ones_never_connect() {
    let binary = busgate_shared::runtime::locate_nats_server(None).expect("nats-server");
    let mut cmd = Command::new(binary);
    cmd.args([
        "-a",
        "127.0.0.1",
        "-p",
        "-1",
        "--user",
        "bus",
        "--pass",
        "s3cret",
    ]);
    let proc = Proc::spawn("nats-server-auth", cmd);
    let port = proc.wait_for(WITHIN, |line| {
        let (_, rest) = line.split_once("Listening for client connections on ")?;
        rest.trim().rsplit_once(':')?.1.parse::<u16>().ok()
    });
    let good = connected(&format!("nats://bus:s3cret@127.0.0.1:{port}")).await;
    good.flush(WITHIN).await.expect("flush");
    let bad =
        Connection::connect(&format!("nats://bus:wrong@127.0.0.1:{port}"), "bad").expect("url");
    assert!(
        !bad.connected(Duration::from_secs(1)).await,
        "wrong password"
    );
    // A list whose first server is down: the next one is used.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    connected(&format!(
        "nats://127.0.0.1:{dead_port},nats://bus:s3cret@127.0.0.1:{port}"
    ))
    .await;
    bad.close(WITHIN).await;
}

#[tokio::test]
async fn close_sends_what_was_queued() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let mut theirs = client.subscribe("last.words").await.expect("sub");
    round_trip(&client).await;
    let wire = connected(&nats.url).await;
    for i in 0..1000u32 {
        wire.publish("last.words", None, &[], i.to_string().as_bytes())
            .expect("publish");
    }
    wire.close(WITHIN).await;
    assert_eq!(
        wire.publish("last.words", None, &[], b"late"),
        Err(PublishError::Closed)
    );
    for i in 0..1000u32 {
        let got = tokio::time::timeout(WITHIN, theirs.next())
            .await
            .expect("in time")
            .expect("message");
        assert_eq!(got.payload, i.to_string().as_bytes(), "in order, none lost");
    }
}

#[tokio::test]
async fn a_panicking_callback_restarts_the_connection_and_delivery_goes_on() {
    let nats = NatsServer::start();
    let wire = connected(&nats.url).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = wire
        .subscribe("boom.test", None, move |msg: Msg| {
            assert_ne!(&msg.payload[..], b"boom", "a subscriber bug");
            let _ = tx.send(msg);
        })
        .expect("subscribed");
    wire.flush(WITHIN).await.expect("flushed");
    let client = nats.client().await;
    client
        .publish("boom.test", "boom".into())
        .await
        .expect("sent");
    // The task panicked: the supervisor marks it disconnected, reconnects, re-subscribes.
    eventually(WITHIN, || async {
        wire.connects() >= 2 && wire.is_connected()
    })
    .await;
    wire.flush(WITHIN).await.expect("flushed after the restart");
    client
        .publish("boom.test", "ok".into())
        .await
        .expect("sent");
    assert_eq!(&next(&mut rx).await.payload[..], b"ok");
}

#[tokio::test]
async fn a_hung_server_is_detected_by_pings_and_readiness_drops() {
    use nix::sys::signal::{kill, Signal};
    let nats = NatsServer::start();
    let mut settings = busgate_shared::nats::NatsSettings::with_url(&nats.url);
    settings.ping_interval = Duration::from_millis(200);
    settings.max_pings_out = 2;
    let wire = Connection::connect_with(&settings, "ping test").expect("settings");
    assert!(wire.connected(WITHIN).await);
    // Flushes in flight do not make a live server look dead.
    for _ in 0..50 {
        wire.flush(WITHIN).await.expect("flushed");
    }
    assert!(wire.is_connected());
    kill(nats.pid(), Signal::SIGSTOP).expect("SIGSTOP");
    // The TCP connection stays open: only the unanswered PINGs tell.
    let stopped = std::time::Instant::now();
    eventually(WITHIN, || async { !wire.is_connected() }).await;
    let detected = stopped.elapsed();
    kill(nats.pid(), Signal::SIGCONT).expect("SIGCONT");
    assert!(detected < Duration::from_secs(3), "{detected:?}");
    eventually(WITHIN, || async { wire.is_connected() }).await;
}

/// A free TCP port on 127.0.0.1 (for a cluster's route listeners, which must be known before
/// either node starts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[tokio::test]
async fn announced_servers_join_the_pool_and_a_lame_duck_is_left_for_one() {
    let (route_a, route_b) = (free_port(), free_port());
    let node = |name: &str, own: u16, other: u16| {
        NatsServer::start_with_config(&format!(
            "server_name: {name}\ncluster {{ name: c, listen: \"127.0.0.1:{own}\", routes: [\"nats-route://127.0.0.1:{other}\"] }}\n"
        ))
    };
    let a = node("a", route_a, route_b);
    let b = node("b", route_b, route_a);
    // Given only a's URL, the connection learns b from the cluster's INFO.
    let wire = connected(&a.url).await;
    let b_addr = format!("127.0.0.1:{}", b.port);
    eventually(WITHIN, || async { wire.servers().contains(&b_addr) }).await;
    let (_sub, mut rx) = subscribe(&wire, "ldm.test", None);
    wire.flush(WITHIN).await.expect("flushed");
    let connects = wire.connects();
    // a enters lame-duck mode: the connection moves to b at once, subscriptions with it.
    let status = Command::new(busgate_shared::runtime::locate_nats_server(None).expect("nats"))
        .arg("--signal")
        .arg(format!("ldm={}", a.pid()))
        .status()
        .expect("signal");
    assert!(status.success());
    eventually(WITHIN, || async {
        wire.connects() > connects && wire.is_connected()
    })
    .await;
    wire.flush(WITHIN).await.expect("flushed on b");
    let on_b = async_nats::connect(&b.url).await.expect("b");
    on_b.publish("ldm.test", "moved".into())
        .await
        .expect("sent");
    on_b.flush().await.expect("flushed");
    assert_eq!(&next(&mut rx).await.payload[..], b"moved");
}
