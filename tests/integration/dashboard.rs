//! The dashboard (SPEC §10) in a real headless browser: Debian's chromium, driven through
//! chromedriver. Signing in with a wrong token and a right one, the status figures read off
//! the page against `tally --json status`, the usage chart against `tally --json report
//! usage --by hour`, an admin's and a member's views, signing out, a session ended by
//! deactivating its account, a session expired on the server's stepped clock, and failed
//! sign-ins rate-limited. It keeps screenshots of the status and usage pages
//! (`target/tmp/dashboard*.png`, or in `docs/` with `TALLY_SCREENSHOT_DOCS=1`).
//!
//! Without chromium and chromedriver the test says so and passes, unless
//! `TALLY_REQUIRE_BROWSER` is set (as `.ci/run`, which installs them, sets it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tally_server::config::HttpConfig;

use crate::harness::*;
use crate::http::{self, Holders};
use crate::policy::user_config_beside;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The figures of a status line, as `tally --json status` names them.
const FIGURES: [&str; 8] = [
    "total",
    "assigned",
    "floating",
    "in_use",
    "borrowed",
    "available",
    "queued",
    "reserved",
];

/// chromedriver, and a headless chromium session through it; both end with the test.
struct Browser {
    driver: Child,
    client: Option<Client>,
}

impl Browser {
    /// `None` (saying so) where chromium or chromedriver is not installed, unless
    /// `TALLY_REQUIRE_BROWSER` asks for them.
    async fn start() -> Option<Browser> {
        let driver_path = which("chromedriver");
        if driver_path.is_none() || !Path::new(CHROMIUM).exists() {
            let why = "the dashboard's browser test needs chromium and chromedriver (apt-get install -y chromium chromium-driver)";
            assert!(
                std::env::var_os("TALLY_REQUIRE_BROWSER").is_none(),
                "{why}, and TALLY_REQUIRE_BROWSER is set"
            );
            eprintln!("skipped: {why}");
            return None;
        }
        let port = free_port();
        let driver = Command::new(driver_path.unwrap())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut browser = Browser {
            driver,
            client: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({
            "browserName": "chrome",
            // The server's certificate is signed by the test's own private CA.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a chromium session");
        browser.client = Some(client);
        Some(browser)
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    async fn goto(&self, url: &str) {
        self.client().goto(url).await.unwrap();
    }

    async fn path(&self) -> String {
        let url = self.client().current_url().await.unwrap();
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        }
    }

    async fn text(&self, css: &str) -> String {
        match self.client().find(Locator::Css(css)).await {
            Ok(found) => found.text().await.unwrap(),
            Err(err) => {
                let page = self.client().source().await.unwrap_or_default();
                panic!("{css}: {err}; at {}:\n{page}", self.path().await)
            }
        }
    }

    async fn count(&self, css: &str) -> usize {
        self.client()
            .find_all(Locator::Css(css))
            .await
            .unwrap()
            .len()
    }

    async fn attr(&self, css: &str, name: &str) -> String {
        let element = self.client().find(Locator::Css(css)).await;
        let element = element.unwrap_or_else(|e| panic!("{css}: {e}"));
        element.attr(name).await.unwrap().unwrap_or_default()
    }

    /// Clicks the button `id`, which sends a form, and waits for the page that answers it
    /// (the old page's root goes stale).
    async fn submit(&self, id: &str) {
        let old = self.client().find(Locator::Css("html")).await.unwrap();
        let button = self.client().find(Locator::Id(id)).await.unwrap();
        button.click().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while old.tag_name().await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "no page answered #{id} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Types `token` into the sign-in form and sends it.
    async fn sign_in(&self, base: &str, token: &str) {
        self.goto(&format!("{base}/signin")).await;
        let field = self.client().find(Locator::Id("token")).await.unwrap();
        field.send_keys(token).await.unwrap();
        self.submit("sign-in").await;
    }

    async fn sign_out(&self) {
        self.submit("sign-out").await;
    }

    /// The status table: each feature's figures, as the page shows them.
    async fn status(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let mut features = BTreeMap::new();
        for row in self
            .client()
            .find_all(Locator::Css("#status tbody tr"))
            .await
            .unwrap()
        {
            let feature = row.attr("data-feature").await.unwrap().unwrap();
            let mut figures = BTreeMap::new();
            for cell in row.find_all(Locator::Css("td[data-figure]")).await.unwrap() {
                let name = cell.attr("data-figure").await.unwrap().unwrap();
                let value = cell.text().await.unwrap().trim().parse().unwrap();
                figures.insert(name, value);
            }
            features.insert(feature, figures);
        }
        features
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

/// `tally --json ARGS...`, waited for without holding up the server in this process.
fn tally(data: &Path, config: &Path, args: &[&str]) -> (Option<i32>, Value) {
    tokio::task::block_in_place(|| http::tally(data, config, args))
}

/// `tally --json status` as the same map the page gives.
fn status_of(data: &Path, config: &Path) -> BTreeMap<String, BTreeMap<String, u64>> {
    let (code, doc) = tally(data, config, &["status"]);
    assert_eq!(code, Some(0), "{doc}");
    doc["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let figures = FIGURES
                .iter()
                .map(|name| (name.to_string(), f[*name].as_u64().unwrap()))
                .collect();
            (f["feature"].as_str().unwrap().to_string(), figures)
        })
        .collect()
}

/// Where a screenshot goes: `docs/` when asked, else the test's scratch directory.
fn screenshot_path(name: &str) -> PathBuf {
    match std::env::var_os("TALLY_SCREENSHOT_DOCS") {
        Some(_) => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs")
            .join(name),
        None => Path::new(env!("CARGO_TARGET_TMPDIR")).join(name),
    }
}

impl Browser {
    /// Keeps a screenshot of the page as `name`.
    async fn screenshot(&self, name: &str) {
        let png = self.client().screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(screenshot_path(name), &png).unwrap();
    }
}

// The server runs in this process, on this runtime; the CLI is a process the test waits
// for, in place, while the runtime's other worker serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_headless_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let server = TestServer::start_stepped(|config| {
        config.http = Some(HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_token: None,
        });
        config.limits.signin_failures = 3;
        // Seats held by the CLI's checkouts stay held while the clock is stepped by hours.
        config.leases.ttl = Duration::from_secs(24 * 3600);
    })
    .await;
    let base = format!("https://localhost:{}", server.http.unwrap().port());
    let data = server.dir.path().join("user-data");
    let owner = server.data_dir().join("client.toml");
    let ok = |config: &Path, args: &[&str]| {
        let (code, doc) = tally(&data, config, args);
        assert_eq!(code, Some(0), "{args:?}: {doc}");
        doc
    };

    // Two features: nuke, whose only entitlement ends in 5 days and whose seats are all
    // held; vray, with seats free, one assigned by name and one borrowed.
    let ends = tally_protocol::format_time(server.now() + 5 * 24 * 3_600_000);
    ok(
        &owner,
        &[
            "entitlement",
            "add",
            "nuke",
            "--seats",
            "2",
            "--expires",
            &ends,
        ],
    );
    ok(
        &owner,
        &["entitlement", "add", "vray", "--seats", "6", "--borrowable"],
    );
    let ana = ok(&owner, &["user", "add", "ana@studio", "--role", "member"]);
    let ana = user_config_beside(&owner, "ana", ana["token"].as_str().unwrap());
    ok(&owner, &["assign", "ana@studio", "vray"]);
    let (mut holders, mut anas) = (Holders::default(), Holders::default());
    holders.hold(&owner, "nuke");
    holders.hold(&owner, "vray");
    anas.hold(&ana, "nuke");
    anas.hold(&ana, "vray");
    ok(&owner, &["borrow", "vray", "--for", "3d"]);
    // An hour later the chart has two hours to draw.
    server.step(Duration::from_secs(3600));

    // No session: the sign-in page. A wrong token is refused, saying so.
    browser.goto(&format!("{base}/")).await;
    assert_eq!(browser.path().await, "/signin");
    browser.sign_in(&base, "not-a-token").await;
    assert!(browser.text("#error").await.starts_with("Not signed in"));

    // The owner signs in and reads the status of every feature: the CLI's figures.
    browser.sign_in(&base, &server.owner_token()).await;
    assert_eq!(browser.path().await, "/");
    assert!(browser.text("#who").await.starts_with("owner@localhost"));
    let shown = browser.status().await;
    assert_eq!(shown, status_of(&data, &owner));
    assert_eq!(shown["nuke"]["available"], 0);
    assert_eq!(shown["vray"]["borrowed"], 1);
    assert_eq!(shown["vray"]["assigned"], 1);
    // Which features are exhausted or expiring shows without reading a number.
    let nuke = "#status tr[data-feature=nuke]";
    assert_eq!(browser.attr(nuke, "data-state").await, "exhausted");
    assert_eq!(
        browser.text(&format!("{nuke} .badge.expiring")).await,
        "expires in 4 days"
    );
    assert_eq!(
        browser
            .attr("#status tr[data-feature=vray]", "data-state")
            .await,
        "free"
    );
    assert_eq!(
        browser.count("#status tr[data-feature=vray] .badge").await,
        0
    );
    browser.screenshot("dashboard.png").await;

    // The usage chart: an hour's bar per hour of the last 7 days, each the peak and pool
    // `tally report usage --by hour` gives for the same hours.
    browser.goto(&format!("{base}/usage")).await;
    for feature in ["nuke", "vray"] {
        let svg = format!("svg.usage[data-feature={feature}]");
        let (code, report) = tally(
            &data,
            &owner,
            &["report", "usage", "--feature", feature, "--by", "hour"],
        );
        assert_eq!(code, Some(0), "{report}");
        let rows = report["usage"].as_array().unwrap();
        assert_eq!(rows.len(), 168, "7 days of hours");
        let bars = browser
            .client()
            .find_all(Locator::Css(&format!("{svg} rect.bar")))
            .await
            .unwrap();
        assert_eq!(bars.len(), rows.len());
        for (bar, row) in bars.iter().zip(rows) {
            let peak = bar.attr("data-peak").await.unwrap().unwrap();
            let pool = bar.attr("data-pool").await.unwrap().unwrap();
            assert_eq!(peak, row["peak_in_use"].to_string(), "{feature} {row}");
            assert_eq!(pool, row["pool"].to_string(), "{feature} {row}");
        }
        let peak = rows
            .iter()
            .map(|r| r["peak_in_use"].as_u64().unwrap())
            .max();
        assert_eq!(
            browser.attr(&svg, "data-peak").await,
            peak.unwrap().to_string()
        );
    }
    assert_eq!(
        browser
            .attr("svg.usage[data-feature=nuke]", "data-peak")
            .await,
        "2"
    );
    // Every seat of nuke was held: its last two hours are drawn red.
    assert_eq!(
        browser
            .count("svg.usage[data-feature=nuke] rect.bar.full")
            .await,
        2
    );
    browser.screenshot("dashboard-usage.png").await;

    // The owner sees everyone's leases, the nodes page its own server.
    browser.goto(&format!("{base}/leases")).await;
    assert_eq!(browser.count("#leases tr[data-user='ana@studio']").await, 2);
    assert_eq!(
        browser
            .count("#leases tr[data-user='owner@localhost']")
            .await,
        3
    );
    browser.goto(&format!("{base}/nodes")).await;
    assert!(browser.text("#server").await.contains("sqlite"));
    assert!(browser.text("#no-nodes").await.contains("single node"));
    browser.goto(&format!("{base}/entitlements")).await;
    assert_eq!(
        browser.count("#entitlements tr[data-state=expiring]").await,
        1
    );

    // Signing out ends the session: the pages lead to the sign-in page again.
    browser.sign_out().await;
    assert_eq!(browser.path().await, "/signin?ended=signed-out");
    browser.goto(&format!("{base}/leases")).await;
    assert_eq!(browser.path().await, "/signin");

    // A member: the same status, their own leases only, and no usage report.
    let ana_token = std::fs::read_to_string(&ana).unwrap();
    let ana_token = ana_token
        .lines()
        .find_map(|l| l.strip_prefix("token = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    browser.sign_in(&base, &ana_token).await;
    assert!(browser.text("#who").await.starts_with("ana@studio member"));
    assert_eq!(browser.status().await, status_of(&data, &ana));
    browser.goto(&format!("{base}/leases")).await;
    assert_eq!(browser.count("#leases tbody tr").await, 2);
    assert_eq!(browser.count("#leases tr[data-user='ana@studio']").await, 2);
    browser.goto(&format!("{base}/usage")).await;
    assert!(browser.text("#usage-refused").await.contains("for admins"));
    assert_eq!(browser.count("svg.usage").await, 0);
    browser.goto(&format!("{base}/nodes")).await;
    assert!(browser.text("#no-nodes").await.starts_with("forbidden"));

    // Deactivating the account ends its session at the next page. (Her checkouts end
    // first: refused, they would sign in again and again, and count as failed sign-ins.)
    drop(anas);
    ok(&owner, &["user", "deactivate", "ana@studio"]);
    browser.goto(&format!("{base}/")).await;
    assert_eq!(browser.path().await, "/signin?ended=revoked");
    assert!(browser
        .text("#notice")
        .await
        .contains("revoked or your account deactivated"));

    // A session lasts SESSION_LIFETIME on the server's clock.
    browser.sign_in(&base, &server.owner_token()).await;
    assert_eq!(browser.path().await, "/");
    server.step(tally_server::http::SESSION_LIFETIME - Duration::from_secs(60));
    browser.goto(&format!("{base}/queue")).await;
    assert_eq!(browser.path().await, "/queue");
    server.step(Duration::from_secs(60));
    browser.goto(&format!("{base}/queue")).await;
    assert_eq!(browser.path().await, "/signin?ended=expired");
    assert!(browser.text("#notice").await.contains("session expired"));

    // Failed sign-ins past limits.signin_failures (3 within a minute) are answered slowly
    // and say so; a valid token still signs in.
    browser.sign_in(&base, "still-not-a-token").await;
    assert!(!browser.text("#error").await.contains("Too many"));
    for _ in 0..3 {
        browser.sign_in(&base, "still-not-a-token").await;
    }
    assert!(browser.text("#error").await.contains("Too many sign-ins"));
    browser.sign_in(&base, &server.owner_token()).await;
    assert_eq!(browser.path().await, "/");

    drop(holders);
    if let Some(client) = browser.client.as_ref() {
        client.clone().close().await.unwrap();
    }
}

/// What the dashboard promises over HTTP, checked without a browser: every page's headers
/// (no caching, a policy with no script and no framing, no sniffing), the session cookie's
/// attributes, a form posted from another site refused, an oversized form refused, a
/// cookie the server never gave leading to the sign-in page, and the pages behind it, whose
/// reading changes nothing (the audit log stays as it was).
#[tokio::test]
async fn the_dashboards_headers_cookie_and_forms_over_https() {
    use reqwest::redirect::Policy;
    let server = TestServer::start_with(|config| {
        config.http = Some(HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_token: None,
        });
    })
    .await;
    let addr = server.http.unwrap();
    let client = http::https_with(&server.ca_pem(), addr, Policy::none());
    let origin = format!("https://localhost:{}", addr.port());

    let page = client.get(http::url(addr, "/signin")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let headers = page.headers();
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let policy = headers["content-security-policy"].to_str().unwrap();
    for part in [
        "default-src 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(policy.contains(part), "{policy}");
    }
    assert!(!policy.contains("script-src"), "{policy}");

    let sign_in = |token: String, origin: &str| {
        client
            .post(http::url(addr, "/signin"))
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
    };
    // From another site: refused, and no session.
    let refused = sign_in(server.owner_token(), "https://elsewhere.example")
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    assert!(refused.headers().get("set-cookie").is_none());
    // A form larger than any token: refused before it is read.
    let huge = sign_in("x".repeat(64 * 1024), &origin).await.unwrap();
    assert_eq!(huge.status().as_u16(), 413);
    // The owner's token: a session cookie only this server's pages get, over HTTPS only.
    let signed_in = sign_in(server.owner_token(), &origin).await.unwrap();
    assert_eq!(signed_in.status().as_u16(), 303);
    assert_eq!(signed_in.headers()["location"], "/");
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    let (pair, attributes) = cookie.split_once("; ").unwrap();
    assert_eq!(
        attributes,
        "Path=/; Max-Age=28800; HttpOnly; Secure; SameSite=Strict"
    );
    let value = pair.strip_prefix("tally_session=").unwrap();
    assert_eq!(value.len(), 64);

    let with = |path: &str, cookie: &str| {
        client
            .get(http::url(addr, path))
            .header("cookie", cookie)
            .send()
    };
    let owner = tally_client::Client::connect(server.client_config(&server.owner_token()))
        .await
        .unwrap();
    let audited = audit(&owner).await;
    for path in [
        "/",
        "/leases",
        "/queue",
        "/usage",
        "/entitlements",
        "/nodes",
    ] {
        let page = with(path, pair).await.unwrap();
        assert_eq!(page.status().as_u16(), 200, "{path}");
        assert_eq!(page.headers()["cache-control"], "no-store", "{path}");
        let body = page.text().await.unwrap();
        assert!(body.contains(r#"id="who">owner@"#), "{path}: {body}");
        assert!(!body.contains("<script"), "{path}");
    }
    assert_eq!(
        audit(&owner).await,
        audited,
        "reading the dashboard changed the audit log"
    );
    // A cookie this server did not give: to the sign-in page, the cookie cleared.
    let forged = with("/", &format!("tally_session={}", "0".repeat(64)))
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 303);
    assert_eq!(forged.headers()["location"], "/signin");
    assert!(forged.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    // Signing out from another site does nothing; from the dashboard it ends the session.
    let sign_out = |origin: &str| {
        client
            .post(http::url(addr, "/signout"))
            .header("origin", origin)
            .header("cookie", pair)
            .send()
    };
    assert_eq!(
        sign_out("https://elsewhere.example")
            .await
            .unwrap()
            .status()
            .as_u16(),
        403
    );
    assert_eq!(with("/", pair).await.unwrap().status().as_u16(), 200);
    let out = sign_out(&origin).await.unwrap();
    assert_eq!(out.headers()["location"], "/signin?ended=signed-out");
    assert_eq!(
        with("/", pair).await.unwrap().headers()["location"],
        "/signin"
    );
    server.stop().await;
}
