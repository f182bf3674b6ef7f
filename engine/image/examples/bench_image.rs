//! Benchmark (not a test): layer unpack throughput beside GNU `tar -x` of the same layer
//! (plain and gzip), and prepare-rootfs time (overlay snapshot of an unpacked image).
//! Prints medians; never fails on a figure.
//!
//! Usage: bench_image [RUNS]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use engine_image::unpack::{unpack_layer, UnpackOptions};
use engine_image::{ImageStore, ImportOptions};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

const FILES: usize = 1500;

/// A reproducible tree: busybox plus files of log-spread sizes (100 B to ~800 KiB).
fn make_tree(dir: &Path) -> u64 {
    engine_test_support::make_busybox_rootfs(dir);
    let mut total = 0u64;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..FILES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = (100.0 * (2.0f64).powf((x % 1300) as f64 / 100.0)) as usize;
        let sub = dir.join(format!("data/{:02}", i % 50));
        std::fs::create_dir_all(&sub).unwrap();
        let content: Vec<u8> = (0..size).map(|j| ((j as u64).wrapping_mul(x) >> 11) as u8).collect();
        std::fs::write(sub.join(format!("f{i}")), &content).unwrap();
        total += size as u64;
    }
    total
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let work = tempfile::Builder::new().prefix("engine-bench-image").tempdir().unwrap();
    let tree = work.path().join("tree");
    let bytes = make_tree(&tree);
    let layer = work.path().join("layer.tar");
    let st = Command::new("tar")
        .args(["--format=posix", "--numeric-owner", "-C"])
        .arg(&tree)
        .arg("-cf")
        .arg(&layer)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("gzip").args(["-k", "-n", "-1"]).arg(&layer).status().unwrap();
    assert!(st.success());
    let layer_gz = work.path().join("layer.tar.gz");
    let mb = bytes as f64 / 1e6;
    let unpack_runs = runs.clamp(3, 7);
    println!("layer: {:.1} MB of file content in {} files; {} runs each (median)", mb, FILES + 400, unpack_runs);

    for (label, path, tar_flag) in [("plain", &layer, "-xf"), ("gzip", &layer_gz, "-xzf")] {
        let mut ours = Vec::new();
        let mut gnu = Vec::new();
        for i in 0..unpack_runs {
            let dest = work.path().join(format!("ours-{label}-{i}"));
            std::fs::create_dir(&dest).unwrap();
            let t = Instant::now();
            let f = std::fs::File::open(path).unwrap();
            let (_, r) = engine_image::compression::decompress(f).unwrap();
            unpack_layer(r, &dest, &UnpackOptions::default(), |_| {}).unwrap();
            ours.push(t.elapsed());
            std::fs::remove_dir_all(&dest).unwrap();

            let dest = work.path().join(format!("tar-{label}-{i}"));
            std::fs::create_dir(&dest).unwrap();
            let t = Instant::now();
            let st = Command::new("tar")
                .args(["--same-owner", "-p", "--xattrs", "-C"])
                .arg(&dest)
                .arg(tar_flag)
                .arg(path)
                .status()
                .unwrap();
            gnu.push(t.elapsed());
            assert!(st.success());
            std::fs::remove_dir_all(&dest).unwrap();
        }
        let (o, g) = (median(ours), median(gnu));
        println!(
            "unpack {label:5}: engine-image {:7.1} ms ({:6.1} MB/s)   tar -x {:7.1} ms ({:6.1} MB/s)   ratio {:.2}",
            ms(o),
            mb / o.as_secs_f64(),
            ms(g),
            mb / g.as_secs_f64(),
            o.as_secs_f64() / g.as_secs_f64()
        );
    }

    // prepare-rootfs: an overlay snapshot of an image whose layers are already unpacked.
    let store = ImageStore::open(work.path().join("store")).unwrap();
    let bb = work.path().join("bb");
    engine_test_support::make_busybox_rootfs(&bb);
    let bb_tar = work.path().join("bb.tar");
    assert!(Command::new("tar").arg("-C").arg(&bb).arg("-cf").arg(&bb_tar).arg(".").status().unwrap().success());
    let opts = ImportOptions {
        reference: Some("bench/busybox".parse().unwrap()),
        changes: vec!["CMD [\"sh\"]".into()],
        message: None,
    };
    let id = store.import(std::fs::File::open(&bb_tar).unwrap(), &opts, &()).unwrap();
    let mut prepare = Vec::new();
    let mut remove = Vec::new();
    for i in 0..runs.max(5) {
        let key = format!("bench-{i}");
        let t = Instant::now();
        let image = store.resolve("bench/busybox").unwrap();
        let snap = store.prepare_snapshot(&key, image.id()).unwrap();
        prepare.push(t.elapsed());
        assert!(snap.rootfs.join("bin/busybox").exists());
        let t = Instant::now();
        store.remove_snapshot(&key).unwrap();
        remove.push(t.elapsed());
    }
    let _ = id;
    println!(
        "prepare-rootfs (resolve + overlay snapshot): median {:.3} ms (target < 2 ms); remove {:.3} ms; {} runs",
        ms(median(prepare)),
        ms(median(remove)),
        runs.max(5)
    );
}
