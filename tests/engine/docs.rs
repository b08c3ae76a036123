//! Every relative link in the top-level documents points at a file that exists.

use std::path::Path;

#[test]
fn relative_links_in_readme_and_architecture_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for doc in ["README.md", "ARCHITECTURE.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split('#').next().unwrap_or("");
            if target.is_empty() || target.contains("://") {
                continue;
            }
            assert!(
                root.join(target).exists(),
                "{doc}: link to {target} points nowhere"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} links found: the parser is broken"
    );
}
