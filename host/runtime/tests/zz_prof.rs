mod common;
use common::*;
use serde_json::json;
use spade_api::{CancelToken, Limits};
use spade_runtime::{Grants, Runtime, RuntimeConfig};
#[test]
#[ignore]
fn prof_loop() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    rt.install("h", &test_plugin("spade-test-hostile"), Grants { secrets: vec!["a".into()], ..Grants::default() }).unwrap();
    let sb = Sandbox::new();
    let rec = Recorder::default();
    let req = request("hostile", json!("noop"), json!({}));
    let c = CancelToken::new();
    for _ in 0..500 { invoke(&rt, &sb, &rec, &req, Limits::default(), &c).unwrap(); }
    let t = std::time::Instant::now();
    let n = 30000;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n { let t = std::time::Instant::now(); invoke(&rt, &sb, &rec, &req, Limits::default(), &c).unwrap(); v.push(t.elapsed()); }
    v.sort();
    eprintln!("total {:?} median {:?}", t.elapsed(), v[n/2]);
}
#[test]
#[ignore]
fn prof_cache() {
    let opts = spade_runtime::bench::BenchOptions { iterations: 1, warmup: 0, cache_loads: 300 };
    let r = spade_runtime::bench::measure(&test_plugin("spade-test-hostile"), "hostile", None, &opts).unwrap();
    eprintln!("{r}");
}
#[test]
#[ignore]
fn prof_sizes() {
    let d = tempfile::tempdir().unwrap();
    let rt = Runtime::new(RuntimeConfig::with_cache_dir(d.path())).unwrap();
    rt.install("h", &test_plugin("spade-test-hostile"), Grants { secrets: vec!["a".into()], ..Grants::default() }).unwrap();
    for e in std::fs::read_dir(d.path()).unwrap() { let e = e.unwrap(); eprintln!("{:?} {}", e.file_name(), e.metadata().unwrap().len()); }
    let p = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().unwrap() == "cwasm").unwrap();
    for _ in 0..3 {
    let t = std::time::Instant::now(); let b = std::fs::read(&p).unwrap(); let t1 = t.elapsed();
    use sha2::Digest; let t = std::time::Instant::now(); let h = sha2::Sha256::digest(&b); let t2 = t.elapsed();
    eprintln!("read {t1:?} sha {t2:?} {}", h.len());
    }
}
#[test]
#[ignore]
fn bundled_install() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    for (name, bytes) in spade_bundled::PLUGINS {
        match rt.install(name, bytes, Grants::all()) {
            Ok(r) => eprintln!("{name}: {:?} {:?} imports {:?}", r.info, r.load_time, r.imports),
            Err(e) => eprintln!("{name}: ERROR {e}"),
        }
    }
    for (name, path) in spade_bundled::TEST_PLUGINS {
        let r = rt.install(name, &std::fs::read(path).unwrap(), Grants::all());
        eprintln!("{name}: {:?}", r.map(|r| r.imports));
    }
}
