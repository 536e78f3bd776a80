//! The proxy configurations of docs/deploy/, run in front of a real natter
//! (`cargo xtask check-deploy` installs nginx, Caddy, HAProxy and
//! redis-server from Debian's packages and runs these with
//! `NATTER_DEPLOY_CHECK=1`): the page and a chat go through the proxy, and a
//! clean close is still announced at once. The recipes for several
//! instances (haproxy.cfg, nginx-instances.conf) run in front of two natters
//! sharing a private Redis: two clients land on different instances, round
//! robin, and still chat in one room.
//!
//! Each configuration is used as written, with the test's loopback
//! addresses put in for `chat.example.com` and natter's `127.0.0.1:8080`
//! (`8081` and `8082` for several instances), TLS left out (nginx's lines
//! marked `# TLS`, Caddy's automatic HTTPS) except in one check each for
//! nginx and Caddy that keep it, and the lines marked `# sizing` made small
//! (a test machine's open-file limit is not a server's): what is tested is
//! the proxying, the upgrade, `Host`, the forwarded address, the timeouts,
//! the spreading over instances and, over `wss://`, the TLS. nginx gets a
//! self-signed certificate made by openssl; Caddy, serving `localhost`,
//! issues its own from its local CA; the client trusts only that
//! certificate or that CA's root.
//!
//! The page served apart (nginx-page.conf, the README's "Deploying the page
//! and the server separately"): nginx serves dist/ with the server named in
//! index.html, natter runs elsewhere allowing the page's origin, and two
//! pages in headless Chromium chat through it; a copy on another host,
//! naming a natter that does not allow its origin, never joins.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use natter_e2e::browser::{Page, scenario};
use natter_e2e::redis_server::RedisServer;
use natter_e2e::{Natter, RemoveOnDrop, WAIT, WsClient, fresh_temp_path};
use natter_shared::{ClientMsg, NoticeKind, Say, ServerMsg};

/// How soon the other member must see a clean close as `left`.
const PROMPT_LEAVE: Duration = Duration::from_secs(2);
/// natter's default ping interval and pong timeout: a proxy's idle timeout
/// for an upgraded connection must be longer.
const PING_AND_PONG: Duration = Duration::from_secs(20 + 10);
/// What a `# sizing` line's number becomes in a test (a few file
/// descriptors each, well within any machine's limit).
const SMALL_LIMIT: u32 = 256;
/// Where the recipes for several instances put the first two natters.
const INSTANCE_ADDRS: [&str; 2] = ["127.0.0.1:8081", "127.0.0.1:8082"];

fn docs(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn required() {
    assert!(
        std::env::var_os("NATTER_DEPLOY_CHECK").is_some(),
        "run by `cargo xtask check-deploy`, which installs the proxies first"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A proxy process, stopped (by PID) when dropped.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM, so nginx's master takes its workers with it (SIGKILL
        // would leave them behind); SIGKILL only if it does not stop.
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proxy {
    /// Panics, with the proxy's `log`, if it has exited.
    fn assert_running(&mut self, log: &Path) {
        if let Ok(Some(status)) = self.0.try_wait() {
            panic!("the proxy exited ({status}): {}", std::fs::read_to_string(log).unwrap_or_default());
        }
    }
}

fn wait_for_port(addr: SocketAddr, proxy: &mut Proxy, log: &Path) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_err() {
        proxy.assert_running(log);
        assert!(Instant::now() < deadline, "the proxy did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// natter behind a proxy that browsers reach at `public_url` (natter's own
/// port chosen here).
fn natter_behind(public_url: &str) -> Natter {
    Natter::start(&["--public-url", public_url, "--trusted-proxy", "127.0.0.1"])
}

/// The page, a chat and a prompt `left`, all through the proxy at `public`.
async fn chat_through(public: SocketAddr) {
    let page = http_get(public, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "the page through the proxy: {page}");
    assert!(page.contains("<title>"), "{page}");
    let url = format!("ws://{public}/ws");
    let mut ada = WsClient::connect(&url).await;
    let mut bo = WsClient::connect(&url).await;
    ada.join("Ada", "lobby").await;
    bo.join("Bo", "lobby").await;
    ada.send(&ClientMsg::Say(Say::new("1", "through the proxy"))).await;
    loop {
        if let ServerMsg::Message(m) = bo.recv().await {
            assert_eq!(m.text.as_str(), "through the proxy");
            break;
        }
    }
    // A clean close reaches natter through the proxy: `left`, at once.
    bo.ws.close(None).await.expect("close");
    let closed = Instant::now();
    loop {
        match ada.recv().await {
            ServerMsg::Notice(n) if n.kind == NoticeKind::Left && n.name.as_str() == "Bo" => break,
            ServerMsg::Notice(n) if n.kind == NoticeKind::TimedOut => panic!("{} timed out instead of leaving", n.name),
            _ => {}
        }
    }
    assert!(closed.elapsed() < PROMPT_LEAVE, "left after {:?}", closed.elapsed());
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    http_get_as(addr, addr, path)
}

/// A GET from `addr` naming `host` in `Host`.
fn http_get_as(addr: SocketAddr, host: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").expect("request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("response");
    String::from_utf8_lossy(&raw).into_owned()
}

/// A configuration of docs/deploy/ for the test: `listen_line` for the line
/// that starts with `listen` (nginx) or `bind` (HAProxy), TLS lines out, the
/// test's addresses in for the documented ones (`natters`: documented,
/// actual).
fn templated(file: &str, listen_line: &str, natters: &[(&str, SocketAddr)]) -> String {
    docs(file)
        .lines()
        .filter_map(|line| {
            let start = line.trim_start();
            if start.starts_with("listen ") || start.starts_with("bind ") {
                Some(listen_line.to_owned())
            } else if line.trim_end().ends_with("# TLS") {
                None
            } else if line.trim_end().ends_with("# sizing") {
                let words: Vec<&str> = line.split_whitespace().collect();
                Some(format!("    {} {SMALL_LIMIT}", words[0]))
            } else {
                let line = natters.iter().fold(line.to_owned(), |l, (doc, addr)| l.replace(doc, &addr.to_string()));
                Some(line.replace("chat.example.com", "127.0.0.1"))
            }
        })
        .map(|line| line + "\n")
        .collect()
}

/// A documented nginx site for the test (`templated`).
fn nginx_site(file: &str, public: SocketAddr, natters: &[(&str, SocketAddr)]) -> String {
    let site = templated(file, &format!("    listen {public};"), natters);
    assert!(site.contains("proxy_set_header Upgrade"), "the documented file proxies upgrades");
    site
}

#[tokio::test]
#[ignore = "run by `cargo xtask check-deploy`, which installs nginx"]
async fn nginx_as_documented_carries_the_page_the_chat_and_a_prompt_leave() {
    required();
    let dir = RemoveOnDrop(fresh_temp_path("nginx"));
    let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let natter = natter_behind(&format!("http://{public}"));
    let site = nginx_site("nginx.conf", public, &[("127.0.0.1:8080", natter.addr)]);
    let _proxy = start_nginx(&dir.0, public, &site);
    chat_through(public).await;
    drop(natter);
}

/// nginx (master and one worker) serving `site` on `public`, its files in `dir`.
fn start_nginx(dir: &Path, public: SocketAddr, site: &str) -> Proxy {
    std::fs::create_dir_all(dir.join("logs")).expect("create");
    let p = dir.display();
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\n\
         events {{ worker_connections 256; }}\nhttp {{\n access_log off;\n client_body_temp_path {p}/body;\n \
         proxy_temp_path {p}/proxy;\n fastcgi_temp_path {p}/fastcgi;\n uwsgi_temp_path {p}/uwsgi;\n \
         scgi_temp_path {p}/scgi;\n{site}\n}}\n"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write");
    let check =
        Command::new(nginx()).arg("-t").arg("-p").arg(dir).arg("-c").arg(&conf_path).output().expect("nginx -t");
    assert!(check.status.success(), "nginx -t: {}", String::from_utf8_lossy(&check.stderr));
    let mut proxy = Proxy(
        Command::new(nginx())
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx"),
    );
    wait_for_port(public, &mut proxy, &dir.join("logs/error.log"));
    proxy
}

fn nginx() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"].iter().map(PathBuf::from).find(|p| p.exists()).expect("nginx is installed")
}

#[tokio::test]
#[ignore = "run by `cargo xtask check-deploy`, which installs Caddy"]
async fn caddy_as_documented_carries_the_page_the_chat_and_a_prompt_leave() {
    required();
    let dir = RemoveOnDrop(fresh_temp_path("caddy"));
    let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let natter = natter_behind(&format!("http://{public}"));
    // No certificates: plain HTTP on loopback.
    let _proxy = start_caddy(&dir.0, "auto_https off", &caddy_site(&format!("http://{public}"), natter.addr), public);
    chat_through(public).await;
    drop(natter);
}

/// docs/deploy/Caddyfile with `address` in for the site's name and `natter`
/// for natter's documented address.
fn caddy_site(address: &str, natter: SocketAddr) -> String {
    let site = docs("Caddyfile");
    assert!(
        site.contains("chat.example.com {") && site.contains("reverse_proxy 127.0.0.1:8080"),
        "the documented site: {site}"
    );
    site.replace("chat.example.com {", &format!("{address} {{")).replace("127.0.0.1:8080", &natter.to_string())
}

/// Caddy serving `site` on `public` with the global options `globals`, its
/// state and its log (the returned path) in `dir`.
fn start_caddy(dir: &Path, globals: &str, site: &str, public: SocketAddr) -> (Proxy, PathBuf) {
    std::fs::create_dir_all(dir).expect("create");
    // No admin endpoint, and only loopback listeners.
    let conf = format!("{{\n\tadmin off\n\tdefault_bind 127.0.0.1\n\t{globals}\n}}\n\n{site}");
    let conf_path = dir.join("Caddyfile");
    std::fs::write(&conf_path, conf).expect("write");
    let log = dir.join("caddy.log");
    let mut proxy = Proxy(
        Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&conf_path)
            .env("HOME", dir)
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start caddy"),
    );
    wait_for_port(public, &mut proxy, &log);
    (proxy, log)
}

/// Two natters sharing rooms through a private Redis, behind a proxy at
/// `public`; dropped in this order (the servers, then Redis).
struct Instances {
    natters: [Natter; 2],
    _redis: RedisServer,
    public: SocketAddr,
}

impl Instances {
    fn behind(public: SocketAddr) -> Self {
        let redis = RedisServer::start();
        let url = redis.url();
        // --healthz-detail: each instance's session count tells where the clients landed.
        let start = || {
            Natter::start(&[
                "--public-url",
                &format!("http://{public}"),
                "--trusted-proxy",
                "127.0.0.1",
                "--redis",
                &url,
                "--healthz-detail",
            ])
        };
        Self { natters: [start(), start()], _redis: redis, public }
    }

    /// The documented instance addresses, each with the test's own.
    fn addrs(&self) -> [(&'static str, SocketAddr); 2] {
        [(INSTANCE_ADDRS[0], self.natters[0].addr), (INSTANCE_ADDRS[1], self.natters[1].addr)]
    }

    /// Each instance's open sessions, from its `/healthz` (which counts
    /// only for a `Host` that names the server: the public one).
    fn sessions(&self) -> [u64; 2] {
        self.natters.each_ref().map(|natter| {
            let reply = http_get_as(natter.addr, self.public, "/healthz");
            let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
            let health: serde_json::Value =
                serde_json::from_str(body).unwrap_or_else(|e| panic!("/healthz of {}: {e}: {reply}", natter.addr));
            health["sessions"].as_u64().unwrap_or_else(|| panic!("no session count: {reply}"))
        })
    }
}

/// The page through the proxy at `public`, and two clients that land on
/// different instances (round robin) and still chat in one room: each sees
/// the other's message, and each gets its own ack.
async fn round_robin_through(public: SocketAddr, instances: &Instances) {
    let page = http_get(public, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "the page through the proxy: {page}");
    let url = format!("ws://{public}/ws");
    let mut ada = WsClient::connect(&url).await;
    let mut bo = WsClient::connect(&url).await;
    ada.join("Ada", "lobby").await;
    bo.join("Bo", "lobby").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let sessions = instances.sessions();
        if sessions == [1, 1] {
            break;
        }
        assert!(Instant::now() < deadline, "one client on each instance, round robin; sessions: {sessions:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    say_and_hear(&mut ada, &mut bo, "a1", "from one instance").await;
    say_and_hear(&mut bo, &mut ada, "b1", "and from the other").await;
}

/// `from` says `text`; `from` gets its ack and `to` the message.
async fn say_and_hear(from: &mut WsClient, to: &mut WsClient, cid: &str, text: &str) {
    from.send(&ClientMsg::Say(Say::new(cid, text))).await;
    loop {
        match from.recv().await {
            ServerMsg::Ack(ack) if ack.cid.as_str() == cid => break,
            ServerMsg::Error(e) => panic!("{text:?} refused: {e:?}"),
            _ => {}
        }
    }
    loop {
        if let ServerMsg::Message(m) = to.recv().await
            && m.text.as_str() == text
        {
            break;
        }
    }
}

#[tokio::test]
#[ignore = "run by `cargo xtask check-deploy`, which installs HAProxy and redis-server"]
async fn haproxy_as_documented_spreads_clients_over_two_instances_that_share_a_room() {
    required();
    let dir = RemoveOnDrop(fresh_temp_path("haproxy"));
    std::fs::create_dir_all(&dir.0).expect("create");
    let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let instances = Instances::behind(public);
    let conf = templated("haproxy.cfg", &format!("    bind {public}"), &instances.addrs());
    for needed in ["balance roundrobin", "uri /readyz", "set-header X-Forwarded-For"] {
        assert!(conf.contains(needed), "the documented file has {needed:?}");
    }
    let tunnel = conf
        .lines()
        .find_map(|line| line.trim().strip_prefix("timeout tunnel "))
        .and_then(|t| t.trim().strip_suffix('s'))
        .and_then(|secs| secs.parse().ok())
        .map(Duration::from_secs)
        .expect("a `timeout tunnel` in seconds");
    assert!(tunnel > PING_AND_PONG, "timeout tunnel {tunnel:?} would cut quiet chats");
    let conf_path = dir.0.join("haproxy.cfg");
    std::fs::write(&conf_path, conf).expect("write");
    let check = Command::new(haproxy()).arg("-c").arg("-f").arg(&conf_path).output().expect("haproxy -c");
    assert!(check.status.success(), "haproxy -c: {}", String::from_utf8_lossy(&check.stderr));
    let log = dir.0.join("haproxy.log");
    // -db: in the foreground, so the PID is HAProxy's own.
    let mut proxy = Proxy(
        Command::new(haproxy())
            .arg("-db")
            .arg("-f")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start haproxy"),
    );
    wait_for_port(public, &mut proxy, &log);
    round_robin_through(public, &instances).await;
    drop(proxy);
    drop(instances);
}

fn haproxy() -> PathBuf {
    ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("haproxy is installed")
}

#[tokio::test]
#[ignore = "run by `cargo xtask check-deploy`, which installs nginx and redis-server"]
async fn nginx_for_several_instances_spreads_clients_over_two_that_share_a_room() {
    required();
    let dir = RemoveOnDrop(fresh_temp_path("nginx-instances"));
    let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let instances = Instances::behind(public);
    let site = nginx_site("nginx-instances.conf", public, &instances.addrs());
    let sticky =
        site.lines().filter(|l| !l.trim_start().starts_with('#')).any(|l| l.contains("hash") || l.contains("sticky"));
    assert!(!sticky, "no sticky sessions: round robin");
    let proxy = start_nginx(&dir.0, public, &site);
    round_robin_through(public, &instances).await;
    drop(proxy);
    drop(instances);
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made with
/// openssl in `dir`: (certificate, key) paths.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("create");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // A server's certificate, not a CA's (openssl's default for -x509).
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl (cargo xtask check-deploy installs it)");
    assert!(made.success(), "openssl req failed");
    (cert, key)
}

type TlsSocket = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A TLS connection to `localhost:<port>` (on 127.0.0.1) that trusts only
/// the certificates in the PEM file `trusted`: a self-signed server's own,
/// or a CA's root.
async fn tls_connect(
    port: u16,
    trusted: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(trusted)?;
    for der in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(der?).map_err(std::io::Error::other)?;
    }
    // The one provider built in (ring) is the default.
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await
}

/// A WebSocket to `wss://localhost:<port>/ws` through TLS, trusting only the
/// certificates in `trusted` (`tls_connect`).
async fn wss(port: u16, trusted: &Path) -> TlsSocket {
    let tls = tls_connect(port, trusted)
        .await
        .unwrap_or_else(|e| panic!("a TLS handshake that {} passes: {e}", trusted.display()));
    let url = format!("wss://localhost:{port}/ws");
    let (ws, _) = tokio_tungstenite::client_async(url, tls).await.expect("WebSocket upgrade over TLS");
    ws
}

async fn tls_send(ws: &mut TlsSocket, msg: &ClientMsg) {
    use futures_util::SinkExt;
    let text = serde_json::to_string(msg).expect("json");
    ws.send(tokio_tungstenite::tungstenite::Message::Text(text.into())).await.expect("send");
}

/// The next protocol message (within `WAIT`).
async fn tls_recv(ws: &mut TlsSocket) -> ServerMsg {
    use futures_util::StreamExt;
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next()).await.expect("a frame in time");
        match frame {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                return serde_json::from_str(&t).expect("a server message");
            }
            Some(Ok(_)) => continue,
            other => panic!("the connection ended: {other:?}"),
        }
    }
}

#[tokio::test]
#[ignore = "run by `cargo xtask check-deploy`, which installs nginx and openssl"]
async fn nginx_with_tls_as_documented_carries_the_chat_over_wss() {
    required();
    let dir = RemoveOnDrop(fresh_temp_path("nginx-tls"));
    let (cert, key) = self_signed(&dir.0.join("tls"));
    let port = free_port();
    let public: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let natter = natter_behind(&format!("https://localhost:{port}"));
    // The recipe as written, TLS lines included: its own listen line on the
    // test's port, the test's certificate in for the documented one.
    let site: String = docs("nginx.conf")
        .lines()
        .map(|line| {
            let line = if line.trim_start().starts_with("listen ") {
                line.replace("listen 443", &format!("listen {public}"))
            } else {
                line.replace("/etc/ssl/certs/chat.example.com.pem", &cert.display().to_string())
                    .replace("/etc/ssl/private/chat.example.com.key", &key.display().to_string())
                    .replace("127.0.0.1:8080", &natter.addr.to_string())
                    .replace("chat.example.com", "localhost")
            };
            line + "\n"
        })
        .collect();
    assert!(site.contains(&format!("listen {public} ssl")), "the recipe's TLS listen line: {site}");
    let _proxy = start_nginx(&dir.0, public, &site);
    chat_over_wss(port, &cert).await;
    drop(natter);
}

#[tokio::test]
#[ignore = "run by `cargo xtask check-deploy`, which installs Caddy"]
async fn caddy_with_tls_as_documented_carries_the_chat_over_wss() {
    required();
    let dir = RemoveOnDrop(fresh_temp_path("caddy-tls"));
    let port = free_port();
    let public: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let natter = natter_behind(&format!("https://localhost:{port}"));
    // The recipe's automatic HTTPS, as written: for `localhost` Caddy issues
    // the certificate from its own local CA, whose root only the test's
    // client trusts (not the system's store). No HTTP->HTTPS redirects, and
    // Caddy's plain-HTTP port a free one rather than 80.
    let globals = format!("skip_install_trust\n\tauto_https disable_redirects\n\thttp_port {}", free_port());
    let site = caddy_site(&format!("localhost:{port}"), natter.addr);
    let (mut proxy, log) = start_caddy(&dir.0, &globals, &site, public);
    let root = dir.0.join("data/caddy/pki/authorities/local/root.crt");
    wait_for_certificate(port, &root, &mut proxy, &log).await;
    chat_over_wss(port, &root).await;
    drop(natter);
}

/// Waits (within `WAIT`) until Caddy has made its local CA's `root` and
/// serves on `port` a certificate for `localhost` that the root passes.
async fn wait_for_certificate(port: u16, root: &Path, proxy: &mut Proxy, log: &Path) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let failed = match tokio::time::timeout(left, tls_connect(port, root)).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no handshake in time".to_owned(),
        };
        proxy.assert_running(log);
        assert!(
            Instant::now() < deadline,
            "no certificate that {} passes on port {port} ({failed}): {}",
            root.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two clients chat over `wss://localhost:<port>/ws`, trusting only
/// `trusted`, and a clean close through TLS is still a prompt `left`.
async fn chat_over_wss(port: u16, trusted: &Path) {
    let mut ada = wss(port, trusted).await;
    let mut bo = wss(port, trusted).await;
    for (ws, name) in [(&mut ada, "Ada"), (&mut bo, "Bo")] {
        tls_send(ws, &ClientMsg::Hello(natter_shared::Hello::new(name, "lobby"))).await;
        match tls_recv(ws).await {
            ServerMsg::Welcome(_) => {}
            other => panic!("{name}: expected a welcome over wss, got {other:?}"),
        }
    }
    tls_send(&mut ada, &ClientMsg::Say(Say::new("1", "over TLS"))).await;
    loop {
        if let ServerMsg::Message(m) = tls_recv(&mut bo).await {
            assert_eq!(m.text.as_str(), "over TLS");
            break;
        }
    }
    // A clean close through TLS is still a prompt leave.
    bo.close(None).await.expect("close");
    let closed = Instant::now();
    loop {
        match tls_recv(&mut ada).await {
            ServerMsg::Notice(n) if n.kind == NoticeKind::Left && n.name.as_str() == "Bo" => break,
            ServerMsg::Notice(n) if n.kind == NoticeKind::TimedOut => panic!("{} timed out instead of leaving", n.name),
            _ => {}
        }
    }
    assert!(closed.elapsed() < PROMPT_LEAVE, "left after {:?}", closed.elapsed());
}

/// How long the browser check of the page served apart may take.
const BROWSER_LIMIT: Duration = Duration::from_secs(120);

/// The built page as a deployer puts it on a static host: dist/ copied,
/// index.html naming the server as the README says (the `natter-server`
/// meta tag; trunk passes the tag through unchanged, so naming it in the
/// built file is the same as naming it before building).
fn page_naming(server: &str, into: &Path) {
    std::fs::create_dir_all(into).expect("create");
    for entry in std::fs::read_dir(natter_e2e::bundle_dir()).expect("read dist/") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), into.join(entry.file_name())).expect("copy");
    }
    let index = into.join("index.html");
    let html = std::fs::read_to_string(&index).expect("index.html");
    let charset = "<meta charset=\"utf-8\" />";
    assert!(html.contains(charset), "index.html has {charset}");
    let named =
        html.replacen(charset, &format!("{charset}\n    <meta name=\"natter-server\" content=\"{server}\" />"), 1);
    std::fs::write(&index, named).expect("write index.html");
}

/// nginx-page.conf on `host`, serving in `files` the page naming `server`.
fn serve_page(dir: &Path, host: SocketAddr, server: SocketAddr, files: &Path) -> Proxy {
    page_naming(&format!("http://{server}"), files);
    let site = templated("nginx-page.conf", &format!("    listen {host};"), &[])
        .replace("/var/www/natter", &files.display().to_string());
    start_nginx(dir, host, &site)
}

#[tokio::test]
#[ignore = "run by `cargo xtask check-deploy`, which installs nginx and Chromium"]
async fn the_page_on_its_own_host_as_documented_chats_with_a_server_elsewhere() {
    required();
    let dir = RemoveOnDrop(fresh_temp_path("page-apart"));
    let page_host: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let origin = format!("http://{page_host}");
    // The server, on its own port, allowing the page's origin.
    let natter = Natter::start(&["--allow-origin", &origin, "--leave-grace", "2s"]);
    let files = dir.0.join("page");
    let _web = serve_page(&dir.0.join("nginx"), page_host, natter.addr, &files);

    // The static host serves the page as the recipe says, and no socket.
    let index = http_get(page_host, "/");
    assert!(index.starts_with("HTTP/1.1 200"), "{index}");
    assert!(index.contains("natter-server"), "{index}");
    assert!(index.to_ascii_lowercase().contains("cache-control: no-cache"), "{index}");
    let wasm_name = std::fs::read_dir(&files)
        .expect("read")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".wasm"))
        .expect("a .wasm in dist/");
    let wasm = http_get(page_host, &format!("/{wasm_name}")).to_ascii_lowercase();
    let wasm_head = &wasm[..wasm.find("\r\n\r\n").unwrap_or(0)];
    assert!(wasm_head.contains("content-type: application/wasm"), "{wasm_head}");
    assert!(wasm_head.contains("immutable"), "hashed files are cached for good: {wasm_head}");
    assert!(http_get(page_host, "/ws").starts_with("HTTP/1.1 404"), "the static host has no socket");

    // The same page on another static host, naming a server that allows
    // only its own origin (the default): what the README's `--allow-origin`
    // is for.
    let refused_host: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let refusing = Natter::start(&["--leave-grace", "2s"]);
    let _refused_web =
        serve_page(&dir.0.join("refused-nginx"), refused_host, refusing.addr, &dir.0.join("refused-page"));

    // In a browser: the page from the static host talks to natter.
    let url = format!("{origin}/");
    let refused_url = format!("http://{refused_host}/");
    scenario("page-apart", BROWSER_LIMIT, |browsers| async move {
        let ada = Page::open(browsers.open("ada").await, &url).await;
        let bob = Page::open(browsers.open("bob").await, &url).await;
        ada.join("Ada", "lobby").await;
        bob.join("Bob", "lobby").await;
        ada.wait_for_text(".messages .notice", "Bob joined").await;
        ada.say("from a page served elsewhere").await;
        bob.wait_for_text(".messages .msg .text", "from a page served elsewhere").await;

        // Without its origin allowed, the server refuses the page's socket:
        // the page keeps retrying and never gets into the room.
        let eve = Page::open(browsers.open("eve").await, &refused_url).await;
        eve.submit_join("Eve", "lobby").await;
        eve.wait_for_text(".join-status", "Reconnecting").await;
        assert!(eve.texts(".member-count").await.is_empty(), "the refused page never joined");
        assert_eq!(eve.texts("form.join").await.len(), 1, "the refused page stays on the join form");
    })
    .await;
    drop(refusing);
    drop(natter);
}
