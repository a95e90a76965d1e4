//! What an answer costs the data path between the upstream and the record: masked for the
//! client by the policy's masks, captured, and handed to the recorder (masked for the record,
//! serialised, queued). Not a test of behaviour: run under callgrind to count instructions
//! per call, e.g.
//!
//! `CALLGATE_COST_SIZE=16384 valgrind --tool=callgrind --toggle-collect='*answer_cost*one_call*'
//!  target/demo/deps/answer_cost-* --ignored --exact one_answer`
//!
//! and divide the total by `CALLGATE_COST_N` (default 200); `CALLGATE_COST_MODE=twice` for
//! the answer masked twice (for the client, then for the record). The answers are the l7
//! bench's.
use std::{hint::black_box, sync::Arc};

use callgate::{
    obligations::mask::{BodyKind, BodyMasker, MaskKey, MaskRules, MaskSpec},
    record::{Record, Recorder, RecorderConfig},
};

const SMALL: &str = r#"{"id":42,"name":"widget","owner":"team-a","price":1299,"tags":["a","b","c"],"note":"nothing sensitive here, just a small JSON answer of about two hundred bytes"}"#;

/// The l7 bench's 16 KiB answer: an array of small objects.
fn json_of_size(size: usize) -> String {
    let item =
        r#"{"id":12345,"name":"a widget of some kind","tags":["x","y"],"note":"plain text"}"#;
    let mut s = String::from("[");
    while s.len() + item.len() + 2 < size {
        if s.len() > 1 {
            s.push(',');
        }
        s.push_str(item);
    }
    s.push(']');
    s
}

fn record() -> Record {
    let mut r = Record::new("conn-7", "127.0.0.1:18080");
    r.service = Some("items".into());
    r.function = Some("get_item".into());
    r.protocol = "rest".into();
    r.args = Some(serde_json::json!({"id": "42"}));
    r.workload = Some(
        serde_json::json!({"pid": 4242, "uid": 0, "comm": "wrk", "cgroup": "/bench-l7",
            "unit": "bench.service"})
        .into(),
    );
    r.decision.action = "allow".into();
    r.decision.enforced = true;
    r.decision.rule = Some("reads".into());
    r.decision.policy_commit = Some("b57b6be".into());
    r.status = Some(200);
    r.latency_ms = 0.2;
    r.bytes_in = 80;
    r
}

/// One answer: masked for the client, captured, recorded. `once`: masked once, the record's
/// copy made from the client's bytes and the spans the same scan found (the data path now);
/// otherwise masked for the client by the policy's masks and again by the recorder with
/// every detector (what it did before, and still does where the masker cannot follow).
#[inline(never)]
fn one_call(rules: &Arc<MaskRules>, key: &MaskKey, recorder: &Recorder, body: &[u8], once: bool) {
    let mut masker = if once {
        BodyMasker::recorded(rules.clone(), key.clone(), BodyKind::Json, usize::MAX)
    } else {
        BodyMasker::new(rules.clone(), key.clone(), BodyKind::Json)
    };
    let mut out = Vec::with_capacity(body.len());
    // As hyper hands it over: 8 KiB reads.
    for chunk in body.chunks(8192) {
        masker.push(chunk, &mut out);
    }
    masker.finish(&mut out);
    let mut rec = record();
    rec.bytes_out = out.len() as u64;
    // As the data path does: the captured buffer becomes the record's value, not copied.
    recorder.keep_answer(&mut rec, out.into(), masker.answer_spans().as_ref());
    black_box(recorder.submit(rec).expect("submit"));
}

#[test]
#[ignore = "a cost probe for callgrind, not a test"]
fn one_answer() {
    let n: usize = std::env::var("CALLGATE_COST_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let size: usize = std::env::var("CALLGATE_COST_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(160);
    let body = if size <= SMALL.len() {
        SMALL.to_string()
    } else {
        json_of_size(size)
    };
    let dir = std::env::temp_dir().join(format!("callgate-cost-{}", std::process::id()));
    let key = MaskKey::from_bytes([5; 32]);
    let rules = Arc::new(
        MaskRules::compile(&[
            MaskSpec::Detector("card_number".into()),
            MaskSpec::Detector("email".into()),
        ])
        .expect("masks"),
    );
    let mut cfg = RecorderConfig::new(&dir);
    cfg.backlog_bytes = 1 << 30;
    let recorder = Recorder::open(cfg, key.clone()).expect("recorder");
    let once = std::env::var("CALLGATE_COST_MODE").as_deref() != Ok("twice");
    for _ in 0..n {
        one_call(&rules, &key, &recorder, body.as_bytes(), once);
    }
    recorder.close();
    let _ = std::fs::remove_dir_all(&dir);
}
