//! Interoperability with Postfix, the reference MTA, in both directions:
//! Postfix relays into weir, and weir delivers to Postfix's smtpd over
//! STARTTLS. A private Postfix instance (its own config, queue and
//! loopback port) is started by the test; `.ci/run` installs the package.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{Gateway, PATIENCE, listener};

struct Postfix {
    dir: PathBuf,
}

impl Postfix {
    fn config_dir(&self) -> PathBuf {
        self.dir.join("etc")
    }

    /// A Postfix that relays everything to `relayhost` and puts what its
    /// smtpd (on `port`, STARTTLS offered) receives on hold.
    fn start(dir: &Path, port: u16, relayhost: u16, cert: &Path, key: &Path) -> Postfix {
        for d in ["etc", "spool", "data"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let status = Command::new("chown")
            .args(["postfix:postfix"])
            .arg(dir.join("data"))
            .status()
            .expect("chown runs");
        assert!(status.success());
        let d = dir.display();
        std::fs::write(
            dir.join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/data
myhostname = pf.interop.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
relay_domains =
default_transport = smtp
relayhost = [127.0.0.1]:{relayhost}
smtp_tls_security_level = may
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_received_header = yes
smtpd_relay_restrictions = check_client_access static:HOLD, permit_mynetworks, reject
",
                cert = cert.display(),
                key = key.display()
            ),
        )
        .unwrap();
        // Debian's pristine master.cf without its inet services (they would
        // clash with a system Postfix), chroot off, plus our smtpd.
        let template = std::fs::read_to_string("/usr/share/postfix/master.cf.dist")
            .or_else(|_| std::fs::read_to_string("/etc/postfix/master.cf"))
            .expect("postfix is installed (by .ci/run)");
        let mut master = String::new();
        let mut skip = false;
        for line in template.lines() {
            if line.starts_with('#') {
                master.push_str(line);
                master.push('\n');
                continue;
            }
            if !line.starts_with([' ', '\t']) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                skip = fields.get(1) == Some(&"inet");
                if !skip && fields.len() >= 8 {
                    let mut f = fields.clone();
                    f[4] = "n";
                    master.push_str(&f.join(" "));
                    master.push('\n');
                    continue;
                }
            }
            if !skip {
                master.push_str(line);
                master.push('\n');
            }
        }
        master.push_str(&format!("127.0.0.1:{port} inet n - n - - smtpd\n"));
        std::fs::write(dir.join("etc/master.cf"), master).unwrap();
        let pf = Postfix {
            dir: dir.to_path_buf(),
        };
        let out = Command::new("postfix")
            .arg("-c")
            .arg(pf.config_dir())
            .arg("start")
            .output()
            .expect("postfix runs");
        assert!(
            out.status.success(),
            "postfix start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pf
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// The messages on hold, as postcat prints them.
    fn held(&self) -> Vec<String> {
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.dir.join("spool/hold")) else {
            return found;
        };
        for e in entries.flatten() {
            let out = Command::new("postcat")
                .arg("-c")
                .arg(self.config_dir())
                .args(["-bh"])
                .arg(e.path())
                .output()
                .unwrap();
            found.push(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        found
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(self.config_dir())
            .arg("stop")
            .output();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn postfix_relays_through_weir_and_weir_delivers_to_postfix_over_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["pf.interop.test".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let pf_port = free_port();
    let gw = Gateway::start(&format!(
        "{}[[route]]\nname = \"back\"\ndomains = [\"*\"]\ntype = \"smarthost\"\nhosts = [\"127.0.0.1:{pf_port}\"]\ntls = \"required\"\n",
        listener("in", "")
    ));
    let pf = Postfix::start(
        &dir.path().join("pf"),
        pf_port,
        gw.addr("in").port(),
        &cert,
        &key,
    );

    // Postfix's sendmail -> Postfix's smtp client -> weir.
    let mut sendmail = Command::new("sendmail")
        .arg("-C")
        .arg(pf.config_dir())
        .args(["-f", "alice@sender.test", "bob@example.test"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sendmail runs");
    use std::io::Write;
    sendmail
        .stdin
        .take()
        .unwrap()
        .write_all("From: alice@sender.test\nTo: bob@example.test\nSubject: interop grüße\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nHello from Postfix through weir.\n.a line that starts with a dot\n".as_bytes())
        .unwrap();
    assert!(sendmail.wait().unwrap().success());

    // weir -> Postfix's smtpd (STARTTLS required), which holds it.
    let start = Instant::now();
    let held = loop {
        let held = pf.held();
        if !held.is_empty() {
            break held;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "nothing reached Postfix; postfix log:\n{}",
            pf.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = &held[0];
    // Both hops left their trace: Postfix -> weir, then weir -> Postfix.
    assert!(text.contains("by mx.test (Weir) with UTF8SMTP"), "{text}");
    assert!(text.contains("from mx.test"), "{text}");
    assert!(
        text.contains("(using TLSv1.3"),
        "weir used STARTTLS: {text}"
    );
    assert!(text.contains("Subject: interop grüße"), "{text}");
    assert!(text.contains("\n.a line that starts with a dot"), "{text}");
    assert!(
        pf.log().contains("status=sent (250 2.0.0 OK queued as"),
        "{}",
        pf.log()
    );
}
