//! The data-directory lock across processes: this test binary re-runs itself
//! as a child. While the parent has the directory open, the child's
//! `Engine::open` gets `Error::Locked` naming the lock file and changes
//! nothing; while the child has it open, the parent is refused; once the
//! holder exits (even without cleanup) the other side opens it.

use crate::support::{opts, rerun_self};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use visage_engine::{Engine, Error};
use visage_tests::{Rng, embedding};

const CHILD_ENV: &str = "VISAGE_LOCK_CHILD";
const ROLE_ENV: &str = "VISAGE_LOCK_ROLE";

/// The child: `expect-locked` opens and must be refused; `hold` opens, says
/// so, holds the directory until its stdin closes, then exits without dropping.
#[test]
fn child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    match std::env::var(ROLE_ENV).unwrap().as_str() {
        "expect-locked" => match Engine::open(dir, opts(false, 1 << 17)) {
            Err(Error::Locked { path }) => {
                assert_eq!(path, dir.join("LOCK"), "the error names the lock file");
                println!("CHILD: refused with Locked");
            }
            Ok(_) => panic!("CHILD: opened a directory another process holds"),
            Err(e) => panic!("CHILD: wrong error {e}"),
        },
        "hold" => {
            let engine = Engine::open(dir, opts(false, 1 << 17)).expect("CHILD: open");
            let g = engine.gallery("g").unwrap();
            g.insert(&[embedding(&mut Rng(9), 2, "from-child")])
                .unwrap();
            println!("CHILD: holding");
            let mut sink = Vec::new();
            std::io::stdin().read_to_end(&mut sink).unwrap();
            // Exit without running destructors: the OS must release the lock.
            std::process::exit(0);
        }
        r => panic!("unknown role {r}"),
    }
}

fn child_cmd(dir: &Path, role: &str) -> Command {
    let mut c = rerun_self("lock::child");
    c.env(CHILD_ENV, dir).env(ROLE_ENV, role);
    c
}

#[test]
fn a_second_process_is_refused_until_the_first_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let e1 = embedding(&mut Rng(1), 1, "from-parent");
    let before;
    {
        let engine = Engine::open(dir, opts(false, 1 << 17)).unwrap();
        let g = engine.create_gallery("g").unwrap();
        g.insert(std::slice::from_ref(&e1)).unwrap();
        before = crate::support::all_files(dir)
            .into_iter()
            .map(|p| (std::fs::read(&p).unwrap(), p))
            .collect::<Vec<_>>();
        let out = child_cmd(dir, "expect-locked").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("CHILD: refused with Locked"),
            "child: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // The refused process touched nothing.
        let after: Vec<_> = crate::support::all_files(dir)
            .into_iter()
            .map(|p| (std::fs::read(&p).unwrap(), p))
            .collect();
        assert!(before == after, "a refused open changed files");
        assert_eq!(g.get(&[1]), vec![e1.clone()]);
    }
    // Now the child holds the directory and the parent is refused.
    let mut child = child_cmd(dir, "hold")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // libtest prints its header first; read until the child speaks.
    let mut line = String::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    while !line.contains("CHILD: holding") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "child ended without holding"
        );
    }
    let err = Engine::open(dir, opts(false, 1 << 17)).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(err.to_string().contains("LOCK"), "{err}");
    drop(child.stdin.take()); // the child exits without cleanup
    assert!(child.wait().unwrap().success());
    let engine = Engine::open(dir, opts(false, 1 << 17)).unwrap();
    let g = engine.gallery("g").unwrap();
    assert_eq!(g.get(&[1]), vec![e1]);
    assert_eq!(g.get(&[2]), vec![embedding(&mut Rng(9), 2, "from-child")]);
}
