//! Feeds arbitrary bytes to the layer unpacker (the tar reader, its extension headers, path
//! checks, whiteouts, links) and checks what it must never do, whatever it accepts: write
//! outside the layer directory, leave a symlink whose relative target climbs out of it, or
//! create a device node other than an overlay whiteout.

#![no_main]

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use engine_image::unpack::{unpack_layer, UnpackOptions};
use libfuzzer_sys::fuzz_target;

fn base() -> &'static PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let b = std::env::temp_dir().join(format!("engine-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&b);
        std::fs::create_dir_all(b.join("outside")).unwrap();
        b
    })
}

fn check(root: &Path, dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        if ft.is_dir() {
            check(root, &p);
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&p).unwrap();
            if target.is_relative() {
                let parent = p.parent().unwrap().strip_prefix(root).unwrap();
                assert!(engine_image::tarstream::resolve_lexically(parent, &target).is_some(), "{} -> {} escapes", p.display(), target.display());
            }
        } else if ft.is_char_device() || ft.is_block_device() {
            assert!(ft.is_char_device() && m.rdev() == 0, "device node {} created", p.display());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let base = base();
    let layer = base.join("a/b/layer");
    let _ = std::fs::remove_dir_all(base.join("a"));
    std::fs::create_dir_all(&layer).unwrap();
    let _ = unpack_layer(data, &layer, &UnpackOptions::default(), |_| {});
    check(&layer, &layer);
    assert_eq!(std::fs::read_dir(base.join("outside")).unwrap().count(), 0, "wrote outside the layer");
    assert_eq!(std::fs::read_dir(base.join("a")).unwrap().count(), 1, "wrote beside the layer");
    assert_eq!(std::fs::read_dir(base.join("a/b")).unwrap().count(), 1, "wrote beside the layer");
});
