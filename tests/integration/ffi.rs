//! libtally from C and C++ against a real `tallyd` process: a C program (`ffi/driver.c`)
//! and its C++ twin over `tally.hpp` (`ffi/driver.cpp`) are compiled with the machine's
//! `cc` and `c++`, linked to the library this test binary was built with, and driven a
//! command at a time while the test kills and restarts the daemon and releases their lease
//! as an admin. The README's examples (`client/ffi/examples/`) are compiled and run too,
//! through the install script and pkg-config.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tally_client::blocking;
use tally_protocol::{
    EntitlementKind, LeaseId, LeaseInfo, LeasesQuery, NewEntitlement, Request, Response,
};

use crate::harness::*;

/// The workspace's root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// Whether a program runs (`cc --version`).
fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The C compiler, or `None` (with a note) where there is none: the only reason these
/// tests skip.
fn c_compiler() -> Option<&'static str> {
    if have("cc") {
        Some("cc")
    } else {
        eprintln!("skipped: no C compiler (`cc`) on this machine");
        None
    }
}

/// libtally installed under a fresh prefix by `scripts/install-libtally`, from the
/// `libtally.so` and `libtally.a` cargo built with this test binary (tally-ffi is a
/// dev-dependency of this package, so they sit in the same `deps` directory).
struct Installed {
    _dir: tempfile::TempDir,
    prefix: PathBuf,
}

impl Installed {
    fn new() -> Installed {
        let exe = std::env::current_exe().unwrap();
        let deps = exe.parent().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let built = dir.path().join("built");
        std::fs::create_dir(&built).unwrap();
        for (suffix, name) in [(".so", "libtally.so"), (".a", "libtally.a")] {
            let found = newest(deps, "libtally", suffix).unwrap_or_else(|| {
                panic!(
                    "no libtally*{suffix} in {}: is tally-ffi built?",
                    deps.display()
                )
            });
            std::fs::copy(&found, built.join(name)).unwrap();
        }
        let prefix = dir.path().join("prefix");
        let out = Command::new(workspace().join("scripts/install-libtally"))
            .arg(&prefix)
            .env("LIBTALLY_DIR", &built)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "install-libtally failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Installed { _dir: dir, prefix }
    }

    fn include(&self) -> PathBuf {
        self.prefix.join("include")
    }

    fn lib(&self) -> PathBuf {
        self.prefix.join("lib")
    }

    /// Compiles one C (or, by its extension, C++) source into `out`, linked to
    /// `libtally.so` with the library's directory as its run path.
    fn compile(&self, source: &Path, out: &Path) {
        self.compile_with(source, out, &[]);
    }

    fn compile_with(&self, source: &Path, out: &Path, extra: &[&str]) {
        let cxx = source.extension().is_some_and(|e| e == "cpp");
        let mut command = Command::new(if cxx { "c++" } else { "cc" });
        if cxx {
            command.arg("-std=c++17");
        }
        command
            .args(["-Wall", "-Wextra", "-Werror"])
            .arg(source)
            .arg(format!("-I{}", self.include().display()))
            .arg(format!("-L{}", self.lib().display()))
            .arg("-ltally")
            .arg(format!("-Wl,-rpath,{}", self.lib().display()))
            .args(extra)
            .arg("-o")
            .arg(out);
        compiled(command, source);
    }
}

/// Runs a compiler command; panics with its messages if it fails.
fn compiled(mut command: Command, source: &Path) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{} does not compile: {}{}",
        source.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The newest file in `dir` named `PREFIX*SUFFIX` whose middle is empty or a cargo hash.
fn newest(dir: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
                .is_some_and(|middle| middle.is_empty() || middle.starts_with('-'))
        })
        .max_by_key(|entry| entry.metadata().and_then(|m| m.modified()).ok())
        .map(|entry| entry.path())
}

/// A compiled driver program, running: commands go to its stdin, its stdout lines come
/// through a channel so that every wait has a deadline.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

/// How long any one step may take before the test fails; only a safety net.
const DEADLINE: Duration = Duration::from_secs(60);

impl Driver {
    fn start(program: &Path, client_toml: &Path, data_dir: &Path) -> Driver {
        let mut child = Command::new(program)
            .env("TALLY_CONFIG", client_toml)
            .env("TALLY_DATA_DIR", data_dir)
            .env("HOME", "/nonexistent")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Driver {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next line, which must start with `prefix`.
    fn expect(&mut self, prefix: &str) -> String {
        let line = self
            .lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("no line from the driver, waiting for {prefix:?}"));
        assert!(
            line.starts_with(prefix),
            "the driver said {line:?}, expected {prefix:?}"
        );
        line
    }

    /// Sends a command and returns its answer, which must start with `prefix`.
    fn ask(&mut self, command: &str, prefix: &str) -> String {
        self.send(command);
        self.expect(prefix)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn add_vray(owner: &blocking::Client, seats: u32) {
    add_entitlement(owner, "vray", seats, false);
}

fn add_entitlement(owner: &blocking::Client, feature: &str, seats: u32, borrowable: bool) {
    let new = NewEntitlement {
        feature: feature.into(),
        seats,
        starts_at: None,
        expires_at: None,
        kind: EntitlementKind::Standard,
        borrowable,
        max_borrow_secs: None,
        reference: "PO-1".into(),
    };
    match owner.call(Request::EntitlementAdd(new)).unwrap() {
        Response::Entitlement(_) => {}
        other => panic!("{other:?}"),
    }
}

/// Every lease the server holds, as the owner sees them; `None` while the owner's client
/// cannot get an answer (the daemon is restarting).
fn held(owner: &blocking::Client) -> Option<Vec<LeaseInfo>> {
    let query = LeasesQuery {
        feature: None,
        user: None,
    };
    match owner.call(Request::Leases(query)) {
        Ok(Response::Leases(list)) => Some(list),
        Ok(other) => panic!("{other:?}"),
        Err(_) => None,
    }
}

/// Waits (up to [`DEADLINE`]) until the owner sees a lease that `check` accepts.
fn until_held(owner: &blocking::Client, what: &str, check: impl Fn(&[LeaseInfo]) -> bool) {
    let end = Instant::now() + DEADLINE;
    loop {
        if held(owner).is_some_and(|leases| check(&leases)) {
            return;
        }
        assert!(Instant::now() < end, "the server never showed {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The whole story, told to one driver: checkout, `no_seat` on a full pool (at once and
/// after a wait), the lease kept across `kill -9` and a restart of tallyd, an admin's
/// forced release learned by the callback and by polling, a waiting checkout that gets the
/// seat freed meanwhile, status, and release.
fn drive(source: &str) {
    if c_compiler().is_none() {
        return;
    }
    let installed = Installed::new();
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("driver");
    installed.compile(
        &workspace().join("tests/integration/ffi").join(source),
        &program,
    );

    let mut daemon = DaemonProcess::start(dir.path(), "1s", "100ms");
    let owner = blocking::Client::connect(daemon.client_config()).unwrap();
    add_vray(&owner, 1);
    let mut driver = Driver::start(&program, &daemon.client_toml(), dir.path());
    driver.expect("connected ");

    // A checkout; the server holds the lease under the id the driver shows.
    let granted = driver.ask("checkout vray 1 0", "lease 0 ");
    let words: Vec<&str> = granted.split(' ').collect();
    assert_eq!(words[3..], ["vray", "1"], "{granted}");
    let id: LeaseId = words[2].parse().unwrap();
    until_held(&owner, "the driver's lease", |leases| {
        leases.iter().any(|l| l.id == id)
    });

    // The pool is full: no_seat at once, and after a wait of 300 ms.
    let refused = driver.ask("checkout vray 1 0", "error no_seat ");
    assert!(refused.contains("vray"), "{refused}");
    let asked = Instant::now();
    let refused = driver.ask("checkout vray 1 300", "error no_seat ");
    assert!(asked.elapsed() >= Duration::from_millis(300), "{refused}");
    assert!(refused.contains("waited 300 ms"), "{refused}");

    driver.ask("watch 0", "watching 0");

    // kill -9 and a restart: the lease is still the driver's. Restored leases get one ttl
    // from the restart; an expiry beyond that shows the driver's client heartbeated it
    // after the restart, i.e. resumed it.
    daemon.kill9();
    daemon.restart();
    let restarted = now_millis();
    until_held(&owner, "the lease renewed after the restart", |leases| {
        leases
            .iter()
            .any(|l| l.id == id && l.expires_at > restarted + 1_000 + 300)
    });
    driver.ask("lost 0", "lost 0 none");

    // An admin's forced release: the callback says so, and so does polling.
    owner.release(id).unwrap();
    driver.expect("callback 0 released");
    driver.ask("lost 0", "lost 0 released");
    driver.ask("release 0", "released 0");

    // A waiting checkout gets the seat someone else gives back meanwhile.
    let other = owner.checkout("vray", 1).unwrap();
    driver.send("checkout vray 1 30000");
    other.release().unwrap();
    let granted = driver.expect("lease 1 ");
    let second: LeaseId = granted.split(' ').nth(2).unwrap().parse().unwrap();
    driver.ask("status vray", "status vray in_use=1 available=0 total=1");

    // A client from explicit servers, CA and token rather than a client file.
    let config = daemon.client_config();
    let ca = config.ca_file.as_ref().unwrap().display().to_string();
    let connect_to = format!(
        "connect_to {} {ca} {} vray",
        config.servers[0], config.token
    );
    driver.ask(&connect_to, "connected_to vray in_use=1");
    let wrong_port = connect_to.replace(&format!(":{}", daemon.port), &format!(":{}", free_port()));
    driver.ask(&wrong_port, "error unreachable ");

    // Released: the server holds nothing.
    driver.ask("release 1", "released 1");
    until_held(&owner, "no lease", |leases| leases.is_empty());
    assert_ne!(id, second);

    driver.ask("quit", "bye");
    assert!(driver.child.wait().unwrap().success());
}

#[test]
fn a_c_program_holds_a_lease_through_a_restart_and_learns_of_its_release() {
    drive("driver.c");
}

#[test]
fn a_cpp_program_holds_a_lease_through_a_restart_and_learns_of_its_release() {
    if !have("c++") {
        eprintln!("skipped: no C++ compiler (`c++`) on this machine");
        return;
    }
    drive("driver.cpp");
}

/// One client shared by four C threads that check out and release at once (on fewer seats
/// than threads, so checkouts wait), then a lost callback that frees its own lease: nothing
/// fails, deadlocks or leaks a seat.
#[test]
fn a_client_serves_many_threads_and_a_callback_may_free_its_lease() {
    if c_compiler().is_none() {
        return;
    }
    let installed = Installed::new();
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("threads");
    installed.compile_with(
        &workspace().join("tests/integration/ffi/threads.c"),
        &program,
        &["-pthread"],
    );
    let daemon = DaemonProcess::start(dir.path(), "5s", "200ms");
    let owner = blocking::Client::connect(daemon.client_config()).unwrap();
    add_vray(&owner, 2);
    let mut driver = Driver::start(&program, &daemon.client_toml(), dir.path());
    driver.expect("threads ok");
    let holding = driver.expect("holding ");
    let id: LeaseId = holding["holding ".len()..].parse().unwrap();
    owner.release(id).unwrap();
    driver.expect("freed released");
    assert!(driver.child.wait().unwrap().success());
    assert_eq!(held(&owner).unwrap(), []);
}

/// Offline work through the C ABI: a borrow verifies with no server at all, goes back
/// with `return`, and a feature that is not borrowable is refused with its code.
fn borrow_offline(source: &str) {
    if c_compiler().is_none() {
        return;
    }
    let installed = Installed::new();
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("driver");
    installed.compile(
        &workspace().join("tests/integration/ffi").join(source),
        &program,
    );
    let mut daemon = DaemonProcess::start(dir.path(), "5s", "200ms");
    let owner = blocking::Client::connect(daemon.client_config()).unwrap();
    add_entitlement(&owner, "vray", 2, true);
    add_entitlement(&owner, "nuke", 2, false);
    let data = dir.path().join("borrows");
    let mut driver = Driver::start(&program, &daemon.client_toml(), &data);
    driver.expect("connected ");

    let verdict = driver.ask("verify vray", "verify vray invalid ");
    assert!(verdict.contains("no borrow of vray"), "{verdict}");
    driver.ask("borrow nuke 3600", "error not_borrowable ");
    let asked = now_millis();
    let borrowed = driver.ask("borrow vray 3600", "borrowed vray ");
    let ends: i64 = borrowed.split(' ').nth(2).unwrap().parse().unwrap();
    assert!(
        (asked + 3_500_000..=now_millis() + 3_600_000).contains(&ends),
        "{borrowed}"
    );
    let figures = owner.status(Some("vray")).unwrap().remove(0);
    assert_eq!((figures.borrowed, figures.available), (1, 1));

    // No server at all: the borrow still verifies.
    daemon.kill9();
    driver.ask("verify vray", "verify vray valid ");
    daemon.restart();

    driver.ask("return vray", "returned vray 1");
    driver.ask("verify vray", "verify vray invalid ");
    let figures = owner.status(Some("vray")).unwrap().remove(0);
    assert_eq!((figures.borrowed, figures.available), (0, 2));
    driver.ask("quit", "bye");
}

#[test]
fn a_c_program_borrows_verifies_offline_and_returns() {
    borrow_offline("driver.c");
}

#[test]
fn a_cpp_program_borrows_verifies_offline_and_returns() {
    if !have("c++") {
        eprintln!("skipped: no C++ compiler (`c++`) on this machine");
        return;
    }
    borrow_offline("driver.cpp");
}

/// The fenced block of `language` in the README's section "From C, C++ and Python".
fn readme_block(language: &str) -> String {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let section = readme
        .split("\n## From C, C++ and Python\n")
        .nth(1)
        .expect("the README has a section \"From C, C++ and Python\"");
    let fence = format!("\n```{language}\n");
    let start = section
        .find(&fence)
        .unwrap_or_else(|| panic!("no ```{language} block in the section"))
        + fence.len();
    let end = section[start..].find("\n```").unwrap() + start;
    format!("{}\n", &section[start..end])
}

/// The README's examples are the files in `client/ffi/examples`, and both build through
/// the installed `tally.pc` and run against a real daemon: they hold a seat and free it.
/// The C one also links statically with `libtally.a`.
#[test]
fn the_readme_examples_build_with_pkg_config_and_run() {
    let examples = workspace().join("client/ffi/examples");
    for (language, file) in [("c", "example.c"), ("cpp", "example.cpp")] {
        let source = std::fs::read_to_string(examples.join(file)).unwrap();
        assert_eq!(
            readme_block(language),
            source,
            "the README's ```{language} block is not client/ffi/examples/{file}"
        );
    }
    if c_compiler().is_none() {
        return;
    }
    assert!(
        have("pkg-config"),
        "pkg-config is missing (.ci/run installs it; apt-get install pkg-config)"
    );
    let installed = Installed::new();
    let dir = tempfile::tempdir().unwrap();
    let pkg_config = |args: &[&str]| -> Vec<String> {
        let out = Command::new("pkg-config")
            .args(args)
            .arg("tally")
            .env("PKG_CONFIG_PATH", installed.lib().join("pkgconfig"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pkg-config {args:?} tally: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        pkg_config(&["--modversion"]),
        [env!("CARGO_PKG_VERSION")],
        "tally.pc's version"
    );
    let flags = pkg_config(&["--cflags", "--libs"]);
    let rpath = format!("-Wl,-rpath,{}", installed.lib().display());
    let mut programs = Vec::new();
    for (compiler, file) in [("cc", "example.c"), ("c++", "example.cpp")] {
        let out = dir.path().join(file.replace('.', "-"));
        let mut command = Command::new(compiler);
        if compiler == "c++" {
            command.arg("-std=c++17");
        }
        command
            .args(["-Wall", "-Wextra", "-Werror"])
            .arg(examples.join(file))
            .args(&flags)
            .arg(&rpath)
            .arg("-o")
            .arg(&out);
        compiled(command, &examples.join(file));
        programs.push(out);
    }
    // Static: libtally.a itself, and what `pkg-config --static` says it needs.
    let static_flags: Vec<String> = pkg_config(&["--static", "--cflags", "--libs"])
        .into_iter()
        .filter(|flag| flag != "-ltally")
        .collect();
    let out = dir.path().join("example-static");
    let mut command = Command::new("cc");
    command
        .arg(examples.join("example.c"))
        .arg(installed.lib().join("libtally.a"))
        .args(&static_flags)
        .arg("-o")
        .arg(&out);
    compiled(command, &examples.join("example.c"));
    programs.push(out);

    let daemon = DaemonProcess::start(dir.path(), "5s", "200ms");
    let owner = blocking::Client::connect(daemon.client_config()).unwrap();
    add_vray(&owner, 1);
    for program in &programs {
        let out = Command::new(program)
            .env("TALLY_CONFIG", daemon.client_toml())
            .env("HOME", "/nonexistent")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.starts_with("holding "),
            "{}: {:?} {stdout} {}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            held(&owner).unwrap(),
            [],
            "{} left a lease",
            program.display()
        );
    }
    // A full pool: the example says so and fails.
    let _other = owner.checkout("vray", 1).unwrap();
    let out = Command::new(&programs[1])
        .env("TALLY_CONFIG", daemon.client_toml())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no license (no_seat)"), "{stderr}");
}
