//! The proxy configurations of docs/deploy/, run in front of a real natter
//! (`cargo xtask check-deploy` installs nginx and Caddy from Debian's
//! packages and runs these with `NATTER_DEPLOY_CHECK=1`): the page and a
//! chat go through the proxy, and a clean close is still announced at once.
//!
//! Each configuration is used as written, with the test's loopback
//! addresses put in for `chat.example.com` and natter's `127.0.0.1:8080`,
//! and TLS left out (the lines marked `# TLS`; there are no certificates on
//! loopback): what is tested is the proxying, the upgrade, `Host`, the
//! forwarded address and the timeouts.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use natter_e2e::{Natter, RemoveOnDrop, WAIT, WsClient, fresh_temp_path};
use natter_shared::{ClientMsg, NoticeKind, Say, ServerMsg};

/// How soon the other member must see a clean close as `left`.
const PROMPT_LEAVE: Duration = Duration::from_secs(2);

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

fn wait_for_port(addr: SocketAddr, proxy: &mut Proxy, log: &Path) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = proxy.0.try_wait() {
            panic!("the proxy exited ({status}): {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "the proxy did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// natter behind a proxy at `public` (its own port chosen here).
fn natter_behind(public: SocketAddr) -> Natter {
    Natter::start(&["--public-url", &format!("http://{public}"), "--trusted-proxy", "127.0.0.1"])
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
    ada.send(&ClientMsg::Say(Say { cid: "1".into(), text: "through the proxy".into() })).await;
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
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("response");
    String::from_utf8_lossy(&raw).into_owned()
}

/// docs/deploy/nginx.conf for the test: TLS lines out, loopback addresses in.
fn nginx_site(public: SocketAddr, natter: SocketAddr) -> String {
    docs("nginx.conf")
        .lines()
        .filter_map(|line| {
            if line.trim_start().starts_with("listen ") {
                Some(format!("    listen {public};"))
            } else if line.trim_end().ends_with("# TLS") {
                None
            } else {
                Some(line.replace("127.0.0.1:8080", &natter.to_string()).replace("chat.example.com", "127.0.0.1"))
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
#[ignore = "run by `cargo xtask check-deploy`, which installs nginx"]
async fn nginx_as_documented_carries_the_page_the_chat_and_a_prompt_leave() {
    required();
    let dir = RemoveOnDrop(fresh_temp_path("nginx"));
    std::fs::create_dir_all(dir.0.join("logs")).expect("create");
    let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let natter = natter_behind(public);
    let site = nginx_site(public, natter.addr);
    assert!(site.contains("proxy_set_header Upgrade"), "the documented file proxies upgrades");
    let p = dir.0.display();
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\n\
         events {{ worker_connections 256; }}\nhttp {{\n access_log off;\n client_body_temp_path {p}/body;\n \
         proxy_temp_path {p}/proxy;\n fastcgi_temp_path {p}/fastcgi;\n uwsgi_temp_path {p}/uwsgi;\n \
         scgi_temp_path {p}/scgi;\n{site}\n}}\n"
    );
    let conf_path = dir.0.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write");
    let check =
        Command::new(nginx()).arg("-t").arg("-p").arg(&dir.0).arg("-c").arg(&conf_path).output().expect("nginx -t");
    assert!(check.status.success(), "nginx -t: {}", String::from_utf8_lossy(&check.stderr));
    let mut proxy = Proxy(
        Command::new(nginx())
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx"),
    );
    wait_for_port(public, &mut proxy, &dir.0.join("logs/error.log"));
    chat_through(public).await;
    drop(natter);
}

fn nginx() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"].iter().map(PathBuf::from).find(|p| p.exists()).expect("nginx is installed")
}

#[tokio::test]
#[ignore = "run by `cargo xtask check-deploy`, which installs Caddy"]
async fn caddy_as_documented_carries_the_page_the_chat_and_a_prompt_leave() {
    required();
    let dir = RemoveOnDrop(fresh_temp_path("caddy"));
    std::fs::create_dir_all(&dir.0).expect("create");
    let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let natter = natter_behind(public);
    let site = docs("Caddyfile")
        .replace("chat.example.com {", &format!("http://{public} {{"))
        .replace("127.0.0.1:8080", &natter.addr.to_string());
    // No admin endpoint and no certificates on loopback; state in the test's directory.
    let conf = format!("{{\n\tadmin off\n\tauto_https off\n}}\n\n{site}");
    let conf_path = dir.0.join("Caddyfile");
    std::fs::write(&conf_path, conf).expect("write");
    let log = dir.0.join("caddy.log");
    let mut proxy = Proxy(
        Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&conf_path)
            .env("HOME", &dir.0)
            .env("XDG_DATA_HOME", dir.0.join("data"))
            .env("XDG_CONFIG_HOME", dir.0.join("config"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start caddy"),
    );
    wait_for_port(public, &mut proxy, &log);
    chat_through(public).await;
    drop(natter);
}
