//! `mail>` end to end: mails sent through a real SMTP server on loopback (aiosmtpd from
//! PyPI, tests/support/smtp_sink.py, installed by scripts/install-test-peers.sh), over the
//! TCP connection the project grants: recipients, headers, a templated body, HTML, an
//! attachment, AUTH; and the failures a user meets.

#[path = "support/smtp_sink.rs"]
mod smtp_sink;
mod support;

use std::path::Path;

use serde_json::Value;
use smtp_sink::Sink;
use support::{spade_env, stderr};

fn run(dir: &Path) -> std::process::Output {
    let secrets = dir.join("secrets.yml");
    spade_env(dir, &["run", "wf.dig", "--session", "2024-01-01"], &[("SPADE_SECRETS", secrets.as_os_str())])
}

fn set_secret(dir: &Path, kv: &str) {
    let secrets = dir.join("secrets.yml");
    let out = spade_env(dir, &["secrets", "--set", kv], &[("SPADE_SECRETS", secrets.as_os_str())]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn project(dir: &Path, port: u16, tasks: &str) {
    std::fs::write(dir.join("spade.yml"), format!("grants:\n  spade-mail:\n    tcp: [\"127.0.0.1:{port}\"]\n"))
        .unwrap();
    std::fs::write(
        dir.join("wf.dig"),
        format!(
            "timezone: UTC\n_export:\n  mail:\n    host: 127.0.0.1\n    port: {port}\n    from: \"Spade Reports <reports@example.com>\"\n{tasks}"
        ),
    )
    .unwrap();
}

#[test]
fn mail_delivers_headers_body_attachments_and_auth() {
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("body.txt"), "Hello ${session_date}, the summary is attached.\n").unwrap();
    std::fs::create_dir(dir.join("out")).unwrap();
    std::fs::write(dir.join("out/summary.csv"), "name,n\r\napple,1\r\n").unwrap();
    project(
        dir,
        sink.port,
        r#"+report:
  mail>: body.txt
  subject: Daily report ${session_date} ✓
  to: [alice@example.com]
  cc: bob@example.com
  bcc: [audit@example.com]
  attach_files:
    - path: out/summary.csv
      content_type: text/csv
+html:
  mail>:
  body: "<b>done</b>"
  html: true
  subject: html
  to: carol@example.com
  username: sender
"#,
    );
    set_secret(dir, "mail.password=s3cret");
    let out = run(dir);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("s3cret"));

    let messages = sink.messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    let m = &messages[0];
    assert_eq!(m["mail_from"], "reports@example.com");
    assert_eq!(m["rcpt_tos"], serde_json::json!(["alice@example.com", "bob@example.com", "audit@example.com"]));
    assert_eq!(m["auth_user"], Value::Null);
    assert_eq!(m["subject"], "Daily report 2024-01-01 ✓");
    assert_eq!(m["from"], "Spade Reports <reports@example.com>");
    assert_eq!((m["to"].as_str(), m["cc"].as_str()), (Some("alice@example.com"), Some("bob@example.com")));
    assert_eq!(m["bcc_header"], false, "Bcc recipients are not in the headers");
    assert_eq!(m["body_type"], "text/plain");
    assert_eq!(m["body"], "Hello 2024-01-01, the summary is attached.\n");
    let attachment = &m["attachments"][0];
    assert_eq!(
        (attachment["filename"].as_str(), attachment["content_type"].as_str()),
        (Some("summary.csv"), Some("text/csv"))
    );
    assert_eq!(attachment["content_b64"], "bmFtZSxuDQphcHBsZSwxDQo=", "the file's bytes, exactly");

    let h = &messages[1];
    assert_eq!(h["auth_user"], "sender");
    assert_eq!((h["body_type"].as_str(), h["body"].as_str()), (Some("text/html"), Some("<b>done</b>")));
}

#[test]
fn mail_failures_name_the_task_and_the_server_reply() {
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let task = "+m:\n  mail>:\n  body: hi\n  subject: s\n  to: a@example.com\n  username: sender\n";
    project(dir, sink.port, task);

    set_secret(dir, "mail.password=wrong");
    let out = run(dir);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("+wf+m") && err.contains("authentication") && err.contains("535"), "{err}");
    assert!(!err.contains("wrong"), "{err}");

    // Not granted: the connection is refused, and the message says how to grant it.
    std::fs::remove_file(dir.join("spade.yml")).unwrap();
    let out = run(dir);
    assert!(stderr(&out).contains("tcp grant"), "{}", stderr(&out));

    project(dir, sink.port, "+m:\n  mail>:\n  body: hi\n  subject: s\n");
    assert!(stderr(&run(dir)).contains("'to' is required"));
    project(
        dir,
        sink.port,
        "+m:\n  mail>:\n  body: hi\n  subject: s\n  to: \"a@example.com\\r\\nBcc: x@example.com\"\n",
    );
    assert!(stderr(&run(dir)).contains("invalid address"), "header injection is refused");
    project(dir, sink.port, "+m:\n  mail>:\n  body: hi\n  subject: s\n  to: a@example.com\n  ssl: true\n");
    assert!(stderr(&run(dir)).contains("ssl: true (SMTP over TLS) is not supported"));
    assert!(sink.messages().is_empty(), "nothing was sent");
}
