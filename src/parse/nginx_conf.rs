//! Reading an nginx configuration the way nginx does for the one thing logwarden needs
//! from it, a `log_format`: the main file and every file its `include` directives name,
//! in order. Distributions define formats in included files (`conf.d/*.conf`), so a
//! format searched for in `nginx.conf` alone was often not found.
//!
//! Includes are resolved as nginx resolves them: a relative path against the directory
//! of the main file (nginx's configuration prefix), `*` and `?` in the last component
//! matched in name order. A file that cannot be read (a copy of `nginx.conf` taken out of
//! its directory) is skipped and named if the format is then not found.

use std::path::{Path, PathBuf};

/// How deep includes may nest: nginx has no limit, but a cycle must end.
const MAX_DEPTH: usize = 8;

/// The text of `main` and of every file it includes, and the includes that could not be
/// read (as written, with why).
pub struct ConfigText {
    pub text: String,
    pub unread: Vec<String>,
}

/// Reads `main` (which must be readable) and, best effort, what it includes.
pub fn read(main: &Path) -> std::io::Result<ConfigText> {
    let text = std::fs::read_to_string(main)?;
    let prefix = main.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut config = ConfigText { text: String::new(), unread: Vec::new() };
    let mut seen = vec![main.to_path_buf()];
    append(&mut config, &text, &prefix, &mut seen, 0);
    Ok(config)
}

/// Appends `text` and, after it, each file it includes (recursively).
fn append(config: &mut ConfigText, text: &str, prefix: &Path, seen: &mut Vec<PathBuf>, depth: usize) {
    config.text.push_str(text);
    config.text.push('\n');
    for pattern in includes(text) {
        for path in expand(prefix, pattern, &mut config.unread) {
            if seen.contains(&path) {
                continue;
            }
            if depth >= MAX_DEPTH {
                config.unread.push(format!("{} (included more than {MAX_DEPTH} deep)", path.display()));
                continue;
            }
            seen.push(path.clone());
            match std::fs::read_to_string(&path) {
                Ok(included) => append(config, &included, prefix, seen, depth + 1),
                Err(e) => config.unread.push(format!("{} ({e})", path.display())),
            }
        }
    }
}

/// The paths of the `include` directives in `text`, each at the start of a line (so
/// that the word inside a quoted format or a comment is not taken for one).
fn includes(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|line| {
        let rest = line.trim_start().strip_prefix("include")?;
        let rest = rest.strip_prefix(|c: char| c.is_ascii_whitespace())?;
        let path = rest.split(';').next()?.trim().trim_matches(|c| c == '"' || c == '\'');
        (!path.is_empty()).then_some(path)
    })
}

/// The files `pattern` names: itself, or with `*` and `?` in its last component the
/// matching files of its directory in name order. A directory that cannot be listed is
/// recorded in `unread`.
fn expand(prefix: &Path, pattern: &str, unread: &mut Vec<String>) -> Vec<PathBuf> {
    let path = prefix.join(pattern);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    if !name.contains(['*', '?']) {
        return vec![path];
    }
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        unread.push(format!("{pattern} (cannot list {})", dir.display()));
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| wildcard_match(&name, n)))
        .collect();
    found.sort();
    found
}

/// Whether `name` matches `pattern`, where `*` is any run of characters and `?` any one
/// (glob(3) on one path component, without classes).
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // The classic two-pointer match: remember the last `*` and retry from one further.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            (i, j) = (i + 1, j + 1);
        } else if i < p.len() && p[i] == '*' {
            (star, mark, i) = (Some(i), j, i + 1);
        } else if let Some(s) = star {
            (i, mark) = (s + 1, mark + 1);
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_glob_does_on_one_component() {
        for (pattern, name, expected) in [
            ("*.conf", "logging.conf", true),
            ("*.conf", "logging.conf.bak", false),
            ("*", "anything", true),
            ("site?", "site1", true),
            ("site?", "site12", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*.conf", ".conf", true),
        ] {
            assert_eq!(wildcard_match(pattern, name), expected, "{pattern} {name}");
        }
    }

    #[test]
    fn includes_are_read_in_order_relative_to_the_main_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        std::fs::write(dir.path().join("conf.d/b.conf"), "# b\n").unwrap();
        std::fs::write(dir.path().join("conf.d/a.conf"), "# a\ninclude nginx.conf;\n").unwrap();
        let main = dir.path().join("nginx.conf");
        std::fs::write(&main, "http {\n    include conf.d/*.conf;\n    include missing.conf;\n}\n").unwrap();
        let config = read(&main).unwrap();
        let (a, b) = (config.text.find("# a").unwrap(), config.text.find("# b").unwrap());
        assert!(a < b, "in name order: {}", config.text);
        // The cycle back to nginx.conf is read once; the missing file is named.
        assert_eq!(config.text.matches("http {").count(), 1);
        assert_eq!(config.unread.len(), 1, "{:?}", config.unread);
        assert!(config.unread[0].contains("missing.conf"));
        // A chain deeper than the bound is cut, and the file cut off is named.
        for i in 0..=MAX_DEPTH {
            std::fs::write(dir.path().join(format!("d{i}.conf")), format!("include d{}.conf;\n", i + 1))
                .unwrap();
        }
        let deep = read(&dir.path().join("d0.conf")).unwrap();
        assert_eq!(deep.unread.len(), 1, "{:?}", deep.unread);
        assert!(deep.unread[0].contains("d9.conf") && deep.unread[0].contains("deep"), "{:?}", deep.unread);
        // Not an include: a word inside a directive.
        assert_eq!(includes("log_format x '$request include y;';\n").count(), 0);
    }
}
