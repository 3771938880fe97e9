//! The rooms' import rules (`src/lib.rs`): each part may use only the parts listed for it,
//! so the webhook and the runner never reach into each other or into the controller.

use std::collections::BTreeMap;
use std::path::Path;

/// Room → the other rooms it may use.
const RULES: &[(&str, &[&str])] = &[
    ("api", &[]),
    ("crypto", &[]),
    ("telemetry", &[]),
    ("store", &["api", "crypto"]),
    ("stamp", &["api", "crypto", "store"]),
    (
        "controller",
        &["api", "crypto", "store", "stamp", "telemetry"],
    ),
    ("webhook", &["api", "crypto", "store", "stamp", "telemetry"]),
    ("runner", &["api", "crypto", "store", "stamp", "telemetry"]),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::<room>` a room's files mention, with the first file that does.
fn used_rooms(room: &str) -> BTreeMap<String, String> {
    let rooms: Vec<&str> = RULES.iter().map(|(r, _)| *r).collect();
    let mut files = Vec::new();
    rust_files(&Path::new("src").join(room), &mut files);
    let mut used = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        for other in &rooms {
            let needle = format!("crate::{other}");
            let hit = text.match_indices(&needle).any(|(at, _)| {
                let next = text[at + needle.len()..].chars().next();
                !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
            if hit && *other != room {
                used.entry(other.to_string())
                    .or_insert_with(|| file.display().to_string());
            }
        }
    }
    used
}

#[test]
fn every_room_imports_only_what_its_rule_allows() {
    let mut broken = Vec::new();
    for (room, allowed) in RULES {
        assert!(Path::new("src").join(room).is_dir(), "src/{room} exists");
        for (other, file) in used_rooms(room) {
            if !allowed.contains(&other.as_str()) {
                broken.push(format!("{room} uses {other} ({file})"));
            }
        }
    }
    assert!(broken.is_empty(), "import rules broken: {broken:#?}");
}

#[test]
fn the_rule_check_sees_a_real_import() {
    // The check must be able to fail: the webhook does use the stamp room.
    assert!(used_rooms("webhook").contains_key("stamp"));
    assert!(!used_rooms("webhook").contains_key("controller"));
}
