//! The documents as a reader meets them: the README stays short and written for users (no issue
//! numbers, commit hashes or machine paths), and every relative link of every Markdown file of
//! the repository leads to a file that exists (and, with `#anchor`, to a heading of it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const README_MAX_LINES: usize = 250;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Every Markdown file of the repository, outside build output, fuzz corpora and vendored trees.
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read a directory") {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.')
                    && !["target", "dist", "corpus", "artifacts", "node_modules"].contains(&name.as_str())
                {
                    walk(&path, out);
                }
            } else if name.ends_with(".md") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo(), &mut out);
    out.sort();
    out
}

/// The text outside fenced code blocks and inline code spans.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            let mut in_code = false;
            for part in line.split('`') {
                if !in_code {
                    out.push_str(part);
                }
                in_code = !in_code;
            }
            out.push('\n');
        }
    }
    out
}

/// The targets of `[text](target)` links in `text`'s prose.
fn links(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut out = Vec::new();
    let mut rest = prose.as_str();
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].trim().to_owned());
        }
    }
    out
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#').replace('`', "").as_str()));
        }
    }
    out
}

#[test]
fn every_relative_link_of_every_markdown_file_leads_somewhere() {
    let files = markdown_files();
    assert!(files.len() >= 20, "only {} Markdown files found under {}", files.len(), repo().display());
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a Markdown file");
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") || link.is_empty() {
                continue;
            }
            let (path, fragment) = link.split_once('#').map_or((link.as_str(), None), |(p, f)| (p, Some(f)));
            let target = if path.is_empty() { file.clone() } else { file.parent().unwrap().join(path) };
            checked += 1;
            if !target.exists() {
                broken.push(format!("{}: {link} (no such file)", file.display()));
            } else if let (Some(fragment), true) = (fragment, target.extension().is_some_and(|e| e == "md")) {
                let text = std::fs::read_to_string(&target).expect("the linked file");
                if !anchors(&text).contains(fragment) {
                    broken.push(format!("{}: {link} (no heading #{fragment})", file.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked >= 30, "only {checked} relative links checked");
}

#[test]
fn the_readme_is_short_and_written_for_users() {
    let text = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let lines = text.lines().count();
    assert!(lines <= README_MAX_LINES, "README.md has {lines} lines (at most {README_MAX_LINES})");
    let mut problems = Vec::new();
    let lower = text.to_lowercase();
    for (n, line) in lower.lines().enumerate() {
        // Issue numbers: "issue 12", "issues 3 and 4", "#12".
        let words: Vec<&str> = line.split(|c: char| c.is_whitespace() || c == '(' || c == ',').collect();
        for pair in words.windows(2) {
            if (pair[0] == "issue" || pair[0] == "issues")
                && pair[1].trim_start_matches('#').starts_with(|c: char| c.is_ascii_digit())
            {
                problems.push(format!("line {}: an issue number: {line}", n + 1));
            }
        }
        for word in &words {
            let word = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '#' && c != '/');
            if word.len() > 1 && word.starts_with('#') && word[1..].chars().all(|c| c.is_ascii_digit()) {
                problems.push(format!("line {}: an issue reference {word}", n + 1));
            }
            // Commit hashes: 7 to 40 hexadecimal characters with both digits and letters.
            let hex = word.len() >= 7 && word.len() <= 40 && word.chars().all(|c| c.is_ascii_hexdigit());
            if hex && word.chars().any(|c| c.is_ascii_digit()) && word.chars().any(|c| c.is_ascii_alphabetic()) {
                problems.push(format!("line {}: what looks like a commit hash: {word}", n + 1));
            }
        }
        for path in ["/tmp/", "/work/", "/home/", "/root/", "/var/folders/"] {
            if line.contains(path) {
                problems.push(format!("line {}: a machine path ({path}): {line}", n + 1));
            }
        }
    }
    assert!(problems.is_empty(), "README.md:\n{}", problems.join("\n"));
}

#[test]
fn the_checks_themselves_catch_what_they_look_for() {
    assert_eq!(links("see [the guide](a/b.md#x) and `[not](code.md)`\n```\n[no](fenced.md)\n```\n"), ["a/b.md#x"]);
    assert_eq!(anchor("Durability and stores: `Durability`"), "durability-and-stores-durability");
    assert!(anchors("# A title\n```\n# not a heading\n```\n## Two words").contains("two-words"));
}
