//! Embeds every `patterns/*.toml` into the binary, so the built-in rules work with no
//! files beside it.

use std::fmt::Write;

fn main() {
    println!("cargo:rerun-if-changed=patterns");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("patterns");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("patterns/ exists")
        .map(|e| e.expect("readable patterns/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut out = String::from(
        "/// The built-in rule files: (name, contents).\npub const BUILTIN: &[(&str, &str)] = &[\n",
    );
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = format!("patterns/{}", f.file_name().unwrap().to_string_lossy());
        writeln!(out, "    ({name:?}, include_str!({:?})),", f.display().to_string()).unwrap();
    }
    out.push_str("];\n");
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("builtin_patterns.rs");
    std::fs::write(dest, out).unwrap();
}
