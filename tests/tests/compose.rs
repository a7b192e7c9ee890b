//! docker-compose.yml, checked without a Docker engine by `scripts/check-compose.sh`
//! (Debian's docker-compose parses and validates it; every environment variable set
//! for a tributary binary must be one its `--help` lists). These tests make sure the
//! check passes on the real file and fails on a typo or a bare-start dependency.
#![cfg(feature = "e2e")]
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The check's verdict on `file` and what it said.
fn check(file: &Path) -> (bool, String) {
    // The binaries whose --help is read: the same build as the other end-to-end tests.
    let bins = e2e::bin("subscriber").unwrap();
    let out = std::process::Command::new(root().join("scripts/check-compose.sh"))
        .arg(file)
        .env("TRIBUTARY_BIN_DIR", bins.parent().unwrap())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The check passes `(dir, file)`.
fn passes((_dir, file): (tempdir::Dir, PathBuf)) {
    let (ok, stderr) = check(&file);
    assert!(ok, "{stderr}");
}

/// The check refuses `(dir, file)` with a message containing `why`.
fn refused((_dir, file): (tempdir::Dir, PathBuf), why: &str) {
    let (ok, stderr) = check(&file);
    assert!(!ok, "passed, where it should have said {why:?}: {stderr}");
    assert!(stderr.contains(why), "{stderr}");
}

/// A copy of the real file with `from` replaced by `to` (which must change it), in a
/// scratch directory inside the repository so that `build: .` still resolves.
fn mutated(from: &str, to: &str) -> (tempdir::Dir, PathBuf) {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    assert!(
        text.contains(from),
        "the compose file no longer contains {from:?}"
    );
    let dir = tempdir::Dir::new();
    let path = dir.0.join("docker-compose.yml");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    (dir, path)
}

mod tempdir {
    /// A directory under target/, removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = super::root()
                .join("target")
                .join(format!("compose-check-{}", e2e::random_id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn the_compose_file_validates_and_sets_only_variables_the_binaries_read() {
    let (ok, stderr) = check(&root().join("docker-compose.yml"));
    assert!(ok, "{stderr}");
    assert!(stderr.contains("ok: "), "{stderr}");
}

#[test]
fn a_misspelt_variable_fails_the_check_naming_it() {
    refused(
        mutated("SUBSCRIBER_WORKERS: \"4\"", "SUBSCRIBER_WORKRS: \"4\""),
        "subscriber: sets SUBSCRIBER_WORKRS, which `subscriber run` does not read",
    );
}

#[test]
fn a_variable_of_another_binary_fails_the_check() {
    // PUBLISHER_TABLE is real, but `subscriber migrate` does not read it.
    refused(
        mutated(
            "      <<: [*database, *logging]\n",
            "      <<: [*database, *logging]\n      PUBLISHER_TABLE: profiles\n",
        ),
        "migrate: sets PUBLISHER_TABLE",
    );
}

#[test]
fn waiting_on_a_bare_start_fails_the_check() {
    refused(
        mutated(
            "      migrate:\n        condition: service_completed_successfully\n\n  # --- LocalStack",
            "      migrate:\n        condition: service_started\n\n  # --- LocalStack",
        ),
        "demo-writer: depends_on migrate does not wait",
    );
}

#[test]
fn a_schema_violation_fails_the_check() {
    refused(
        mutated("    healthcheck: *readyz\n", "    healthcheck: [*readyz]\n"),
        "docker-compose config failed",
    );
}

#[test]
fn a_stop_grace_period_shorter_than_the_subscribers_drain_fails_the_check() {
    refused(
        mutated("stop_grace_period: 60s", "stop_grace_period: 15s"),
        "subscriber: stop_grace_period 15s is not longer than the drain bound of 50 s",
    );
    // No grace period at all: the publisher's 10 s default is too short.
    refused(
        mutated("  stop_grace_period: 60s\n", ""),
        "publisher: stop_grace_period 10s (default) is not longer",
    );
}

/// The real compose file beside a stand-in override with `from` replaced by `to`.
fn with_standin(from: &str, to: &str) -> (tempdir::Dir, PathBuf) {
    let (dir, file) = mutated("services:\n", "services:\n");
    let text = std::fs::read_to_string(root().join("docker-compose.standin.yml")).unwrap();
    assert!(
        text.contains(from),
        "the override no longer contains {from:?}"
    );
    std::fs::write(
        dir.0.join("docker-compose.standin.yml"),
        text.replacen(from, to, 1),
    )
    .unwrap();
    (dir, file)
}

#[test]
fn the_standin_override_passes_and_may_only_swap_images() {
    passes(with_standin("services:\n", "services:\n"));

    // A stand-in that changes anything but the image hides a difference from upstream.
    refused(
        with_standin(
            "    pull_policy: never\n  dynamodb:",
            "    pull_policy: never\n    environment:\n      POSTGRES_DB: other\n  dynamodb:",
        ),
        "docker-compose.standin.yml: postgres: changes environment",
    );

    // …and its image must say that it is a stand-in.
    refused(
        with_standin(
            "localhost/tributary-standin/moto:latest",
            "motoserver/moto:latest",
        ),
        "moto: image 'motoserver/moto:latest' is not named",
    );
}
