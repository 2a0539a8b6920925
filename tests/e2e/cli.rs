//! The command line: version, effective config, and errors that name the
//! key, the file and the line, with exit status 64 before anything binds.

use std::process::Command;

use crate::harness::weir_bin;

fn weir(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(weir_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version() {
    let (code, out, _) = weir(&["--version"], &[]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("weir {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_config_prints_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(weir_bin())
        .arg("check-config")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(parsed["data_dir"].as_str(), Some("./weir-data"));
    let l = &parsed["listener"].as_array().unwrap()[0];
    assert_eq!(l["bind"].as_str(), Some("127.0.0.1:2525"));
    let relay: Vec<&str> = l["relay_clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(relay, ["127.0.0.0/8", "::1/128"]);
}

#[test]
fn environment_overrides_the_file() {
    let (code, out, err) = weir(
        &["check-config"],
        &[
            ("WEIR_HOSTNAME", "env.test"),
            ("WEIR_SPOOL__SEGMENT_SIZE", "\"1 MiB\""),
            // Not ours: scripts use the prefix too; ignored, not an error.
            ("WEIR_BIN", "/usr/local/bin/weir"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hostname = \"env.test\""), "{out}");
    assert!(
        out.contains("segment_size = \"1.0 MiB\"") || out.contains("segment_size = 1048576"),
        "{out}"
    );
    // A bad value from the environment is named as such.
    let (code, _, err) = weir(&["check-config"], &[("WEIR_DATA_DIR", "[1, 2]")]);
    assert_eq!(code, 64);
    assert!(
        err.contains("`data_dir`") && err.contains("environment"),
        "{err}"
    );
}

#[test]
fn unknown_keys_and_bad_values_name_key_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weir.toml");
    let cases = [
        (
            "hostname = \"mx.test\"\n\n[[listener]]\nname = \"in\"\nbidn = \"127.0.0.1:25\"\n",
            "listener.0.bidn",
            "line 5",
        ),
        (
            "[[listener]]\nname = \"in\"\nbind = \"not an address\"\n",
            "listener.0.bind",
            "line 3",
        ),
        ("hostnme = \"x\"\n", "hostnme", "line 1"),
        (
            "[[listener]]\nname = \"in\"\nmax_message_size = \"lots\"\n",
            "listener.0.max_message_size",
            "line 3",
        ),
    ];
    for (text, key, line) in cases {
        std::fs::write(&file, text).unwrap();
        let (code, _, err) = weir(&["check-config", "--config", file.to_str().unwrap()], &[]);
        assert_eq!(code, 64, "{text}: {err}");
        assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        assert!(err.contains(file.to_str().unwrap()), "{text}: {err}");
        assert!(err.contains(line), "{text}: {err}");
    }
    // serve refuses the same way, before binding anything.
    let (code, _, err) = weir(&["serve", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 64, "{err}");
    let (code, _, err) = weir(&["serve", "--config", "/nonexistent/weir.toml"], &[]);
    assert_eq!(code, 64);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn tls_without_a_certificate_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weir.toml");
    std::fs::write(&file, "[[listener]]\nname = \"in\"\ntls = \"starttls\"\n").unwrap();
    let (code, _, err) = weir(&["check-config", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 64);
    assert!(
        err.contains("listener.0.tls") && err.contains("tls_cert"),
        "{err}"
    );
}
