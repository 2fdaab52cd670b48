//! The mount used with the tools people point at directories: `rsync -a`,
//! `mv`, `cp -a`, `tar -x`, an editor's save through a temporary file,
//! shell redirections, `touch`, `df`, and the errno of a name that is too
//! long. Real tracker, real
//! daemons, real FUSE mounts.

use fileshare_tests::mount::Mount;
use fileshare_tests::world::{User, World};
use fileshare_tests::{cmp, random_file, HANG_LIMIT, MIB};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// Runs a command that must succeed, with the daemon's log on failure.
fn ok(m: &Mount, cmd: &str, args: &[&str]) {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} exited with {}: {}{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        m.log()
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The names a directory of a mount lists.
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Waits until `dir` lists exactly `want`; says what it lists if not.
fn wait_names(dir: &Path, want: &BTreeSet<String>) {
    let start = std::time::Instant::now();
    loop {
        let got = names(dir);
        if got == *want {
            return;
        }
        assert!(
            start.elapsed() < HANG_LIMIT,
            "{} lists {got:?}, not {want:?}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `path` reads `want`; says what it reads and the daemons'
/// logs if not.
fn wait_content(path: &Path, want: &[u8], logs: &[&Mount], more: impl Fn() -> String) {
    let start = std::time::Instant::now();
    loop {
        let got = std::fs::read(path);
        if got.as_deref().ok() == Some(want) {
            return;
        }
        if start.elapsed() > HANG_LIMIT {
            let logs: Vec<String> = logs.iter().map(|m| m.log()).collect();
            panic!(
                "{} reads {:?}, not {:?}\n{}\n{}",
                path.display(),
                got.map(|b| String::from_utf8_lossy(&b).into_owned()),
                String::from_utf8_lossy(want),
                more(),
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The names the tracker lists in `group` for `user`, through `fsd
/// list-files` (no mount, no cache in between).
fn tracker_names(fsd: &Path, trackers: &Path, user: &User, group: &str) -> BTreeSet<String> {
    let out = Command::new(fsd)
        .arg("--home")
        .arg(&user.home)
        .arg("--trackers")
        .arg(trackers)
        .args(["list-files", group])
        .env("FILESHARE_PASSWORD", format!("pw-{}", user.name))
        .output()
        .expect("run fsd list-files");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("  ").next())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

/// Runs `action` while another thread polls `poll` as fast as it can;
/// returns every value `poll` saw.
fn watching<T: Send>(poll: impl Fn() -> T + Sync, action: impl FnOnce()) -> Vec<T> {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut seen = Vec::new();
            while !done.load(Ordering::Relaxed) {
                seen.push(poll());
                std::thread::sleep(Duration::from_millis(5));
            }
            seen.push(poll());
            seen
        });
        action();
        done.store(true, Ordering::Relaxed);
        watcher.join().expect("the watcher panicked")
    })
}

/// A directory of files to copy in: names and sizes of a small tree.
fn source_dir(w: &World, dir: &str, files: &[(&str, usize)]) -> PathBuf {
    let root = w.path(dir);
    std::fs::create_dir_all(&root).expect("mkdir");
    for (i, (name, size)) in files.iter().enumerate() {
        random_file(&root.join(name), *size, 40 + i as u64);
    }
    root
}

#[test]
fn rsync_into_a_group_lists_only_the_final_names_for_others() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    let files = [
        ("report.pdf", 300_000),
        ("video.bin", 6 * MIB),
        ("empty.txt", 0),
        (".hidden.cfg", 1234),
        ("notes.md", 77),
    ];
    let src = source_dir(&w, "tree", &files);
    let want: BTreeSet<String> = files.iter().map(|(n, _)| n.to_string()).collect();
    let dest = format!("{}/", s(&a.path("g")));
    let from = format!("{}/", s(&src));
    let (fsd, trackers) = (w.fsd.clone(), w.trackers_file().to_path_buf());
    let seen = watching(
        || {
            let mut n = names(&b.path("g"));
            n.extend(tracker_names(&fsd, &trackers, &u[1], "g"));
            n
        },
        || ok(&a, "rsync", &["-a", &from, &dest]),
    );
    wait_names(&b.path("g"), &want);
    let all: BTreeSet<String> = seen.into_iter().flatten().collect();
    assert!(
        all.is_subset(&want),
        "bob saw names rsync never meant to share: {:?}",
        all.difference(&want).collect::<Vec<_>>()
    );
    for (name, _) in files {
        cmp(&src.join(name), &b.path(&format!("g/{name}")));
    }
    // Again, with everything there already: still exit 0, same names.
    ok(&a, "rsync", &["-a", &from, &dest]);
    wait_names(&b.path("g"), &want);
    assert_eq!(tracker_names(&w.fsd, w.trackers_file(), &u[1], "g"), want);
}

#[test]
fn mv_within_a_group_renames_it_for_everyone_in_one_step() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    let src = w.path("draft.bin");
    let bytes = random_file(&src, 3 * MIB, 7);
    ok(&a, "cp", &[s(&src), s(&a.path("g"))]);
    // Shared before cp returned: the tracker lists it at once.
    assert_eq!(
        tracker_names(&w.fsd, w.trackers_file(), &u[1], "g"),
        set(&["draft.bin"])
    );
    wait_names(&b.path("g"), &set(&["draft.bin"]));

    // A read open under the old name keeps reading after the rename.
    use std::io::Read;
    let mut open = std::fs::File::open(a.path("g/draft.bin")).expect("open");
    let mut head = vec![0u8; MIB];
    open.read_exact(&mut head).expect("read before");

    let (fsd, trackers) = (w.fsd.clone(), w.trackers_file().to_path_buf());
    let seen = watching(
        || tracker_names(&fsd, &trackers, &u[1], "g"),
        || {
            ok(
                &a,
                "mv",
                &[s(&a.path("g/draft.bin")), s(&a.path("g/final.bin"))],
            )
        },
    );
    for listing in &seen {
        assert_eq!(
            usize::from(listing.contains("draft.bin")) + usize::from(listing.contains("final.bin")),
            1,
            "a listing with both names or neither: {listing:?}"
        );
    }
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).expect("read after the rename");
    head.extend(rest);
    assert!(head == bytes, "the open read changed across the rename");
    wait_names(&b.path("g"), &set(&["final.bin"]));
    cmp(&src, &b.path("g/final.bin"));
    assert_eq!(
        std::fs::metadata(a.path("g/draft.bin"))
            .expect_err("old name")
            .raw_os_error(),
        Some(libc::ENOENT)
    );

    // Onto another file of alice's: replaced, as rename(2) does.
    let other = w.path("other.bin");
    random_file(&other, 1000, 8);
    ok(&a, "cp", &[s(&other), s(&a.path("g"))]);
    ok(
        &a,
        "mv",
        &["-f", s(&a.path("g/final.bin")), s(&a.path("g/other.bin"))],
    );
    wait_names(&b.path("g"), &set(&["other.bin"]));
    cmp(&src, &b.path("g/other.bin"));

    // Onto bob's file: refused, and nothing changes.
    let bobs = w.path("bobs.txt");
    random_file(&bobs, 10, 9);
    ok(&b, "cp", &[s(&bobs), s(&b.path("g"))]);
    wait_names(&a.path("g"), &set(&["other.bin", "bobs.txt"]));
    let err = std::fs::rename(a.path("g/other.bin"), a.path("g/bobs.txt"))
        .expect_err("another member's file is not replaced");
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    cmp(&bobs, &a.path("g/bobs.txt"));
    cmp(&src, &a.path("g/other.bin"));
}

#[test]
fn mv_across_groups_copies_and_removes() {
    let (w, u) = World::network(&["alice", "bob"]);
    w.group("h", &u[0], &[&u[1]]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    let src = w.path("song.ogg");
    random_file(&src, 2 * MIB + 5, 11);
    ok(&a, "cp", &[s(&src), s(&a.path("g"))]);
    let err = std::fs::rename(a.path("g/song.ogg"), a.path("h/song.ogg")).expect_err("EXDEV");
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV), "{err}");
    ok(&a, "mv", &[s(&a.path("g/song.ogg")), s(&a.path("h/"))]);
    wait_names(&b.path("h"), &set(&["song.ogg"]));
    wait_names(&b.path("g"), &set(&[]));
    cmp(&src, &b.path("h/song.ogg"));
}

#[test]
fn cp_a_and_tar_x_into_a_group() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    let files = [("a.txt", 100), ("b.bin", MIB + 3), ("c.dat", 0)];
    let src = source_dir(&w, "cp-src", &files);
    ok(
        &a,
        "cp",
        &["-a", &format!("{}/.", s(&src)), s(&a.path("g"))],
    );
    let tarred = [("t1.log", 5000), ("t2.iso", 2 * MIB)];
    let tsrc = source_dir(&w, "tar-src", &tarred);
    let archive = w.path("files.tar");
    ok(
        &a,
        "tar",
        &["-cf", s(&archive), "-C", s(&tsrc), "t1.log", "t2.iso"],
    );
    ok(&a, "tar", &["-xf", s(&archive), "-C", s(&a.path("g"))]);
    let want = set(&["a.txt", "b.bin", "c.dat", "t1.log", "t2.iso"]);
    wait_names(&b.path("g"), &want);
    for (name, _) in files {
        cmp(&src.join(name), &b.path(&format!("g/{name}")));
    }
    for (name, _) in tarred {
        cmp(&tsrc.join(name), &b.path(&format!("g/{name}")));
    }
}

#[test]
fn an_editor_saves_through_a_temporary_file_and_a_rename() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    std::fs::write(a.path("g/notes.txt"), b"first version\n").expect("write v1");
    wait_names(&b.path("g"), &set(&["notes.txt"]));
    let (fsd, trackers) = (w.fsd.clone(), w.trackers_file().to_path_buf());
    let seen = watching(
        || tracker_names(&fsd, &trackers, &u[1], "g"),
        || {
            // As GNOME's editors save: a temporary file beside the old one,
            // synced, then renamed over it.
            let tmp = a.path("g/.goutputstream-K3J9QZ");
            std::fs::write(&tmp, b"second version, longer\n").expect("write the temporary");
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .expect("fsync");
            std::fs::rename(&tmp, a.path("g/notes.txt")).expect("rename over the old one");
        },
    );
    for listing in &seen {
        assert_eq!(*listing, set(&["notes.txt"]), "bob saw the save half done");
    }
    let more = || {
        let ls = run("ls", &["-li", s(&b.path("g"))]);
        format!(
            "tracker: {}\nls -li: {}",
            w.fsd_ok(&u[1], &["list-files", "g"]),
            String::from_utf8_lossy(&ls.stdout)
        )
    };
    wait_content(
        &b.path("g/notes.txt"),
        b"second version, longer\n",
        &[&a, &b],
        more,
    );
    // sed -i saves the same way, through a temporary file of its own.
    ok(
        &a,
        "sed",
        &["-i", "s/second/third/", s(&a.path("g/notes.txt"))],
    );
    wait_content(
        &b.path("g/notes.txt"),
        b"third version, longer\n",
        &[&a, &b],
        more,
    );
    wait_names(&b.path("g"), &set(&["notes.txt"]));
}

#[test]
fn df_shows_the_size_and_long_names_are_too_long() {
    let (w, u) = World::network(&["alice"]);
    let a = w.mount(&u[0], &[]);
    let out = run("df", &["-P", "-k", s(&a.mountpoint)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let row: Vec<&str> = text
        .lines()
        .nth(1)
        .expect("a row")
        .split_whitespace()
        .collect();
    let size: u64 = row[1].parse().expect("size");
    let avail: u64 = row[3].parse().expect("available");
    assert!(size > 0 && avail > 0 && avail <= size, "df: {text}");

    let long = "n".repeat(256);
    let err = std::fs::write(a.path(&format!("g/{long}")), b"x").expect_err("256 bytes");
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG), "{err}");
    let err = std::fs::metadata(a.path(&format!("g/{long}"))).expect_err("stat");
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG), "{err}");
    let longest = "n".repeat(255);
    std::fs::write(a.path(&format!("g/{longest}")), b"x").expect("255 bytes is a name");
    assert!(w.fsd_ok(&u[0], &["list-files", "g"]).contains(&longest));
}

#[test]
fn a_child_forked_while_a_file_is_written_does_not_share_it_half_written() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    let (first, second) = (
        "the first half\n".repeat(4096),
        "the second half\n".repeat(4096),
    );
    let bytes = format!("{first}{second}").into_bytes();
    let mut f = std::fs::File::create(a.path("g/whole.bin")).unwrap();
    use std::io::Write;
    f.write_all(first.as_bytes()).unwrap();
    // The child inherits the descriptor (close-on-exec) and its exec
    // closes and flushes it while the writer is only half done.
    ok(&a, "true", &[]);
    f.write_all(second.as_bytes())
        .expect("writes after a child's exec go on");
    drop(f);
    wait_content(&b.path("g/whole.bin"), &bytes, &[&a, &b], String::new);
}

/// Whole pieces are hashed while a file is written in order; a program
/// that writes out of order, goes back to change a byte already hashed,
/// or truncates, still shares exactly the bytes it left, as others read
/// them.
#[test]
fn files_written_out_of_order_or_changed_behind_the_writes_share_their_final_bytes() {
    use std::os::unix::fs::FileExt;
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    let piece = 512 * 1024;
    let src = w.path("src.bin");
    let data = random_file(&src, 3 * piece + 777, 11);
    let mut back = data.clone();
    back[10] ^= 0x5a;
    type Writer<'a> = &'a dyn Fn(&std::fs::File);
    let cases: [(&str, Vec<u8>, Writer); 3] = [
        ("backwards.bin", data.clone(), &|f| {
            for at in [3 * piece, 2 * piece, piece, 0] {
                let end = (at + piece).min(data.len());
                f.write_all_at(&data[at..end], at as u64).expect("write");
            }
        }),
        ("changed.bin", back.clone(), &|f| {
            f.write_all_at(&data, 0).expect("write");
            // Two whole pieces were complete, hence maybe hashed already.
            std::thread::sleep(Duration::from_millis(200));
            f.write_all_at(&back[10..11], 10).expect("write back");
        }),
        ("truncated.bin", data[..piece + 5].to_vec(), &|f| {
            f.write_all_at(&data, 0).expect("write");
            std::thread::sleep(Duration::from_millis(200));
            f.set_len(piece as u64 + 5).expect("truncate");
        }),
    ];
    for (name, want, write) in &cases {
        let f = std::fs::File::create(a.path(&format!("g/{name}"))).expect("create");
        write(&f);
        drop(f);
        let theirs = b.path(&format!("g/{name}"));
        let start = std::time::Instant::now();
        loop {
            let got = std::fs::read(&theirs).unwrap_or_default();
            if got == *want {
                break;
            }
            if start.elapsed() > HANG_LIMIT {
                let first = got.iter().zip(want.iter()).position(|(x, y)| x != y);
                panic!(
                    "{name}: bob reads {} bytes, not {}; first difference at {first:?}\n{}\n----\n{}",
                    got.len(),
                    want.len(),
                    a.log(),
                    b.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A shell's `>` opens the file, moves the descriptor onto stdout and
/// closes the first one before anything is written; programs that dup
/// their descriptors do the same. Each file is shared with the bytes the
/// shell wrote, by the time the shell is done (the tracker lists it), and
/// another member reads exactly those bytes.
#[test]
fn shell_redirections_share_what_the_shell_wrote() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    let g = s(&a.path("g")).to_string();
    let cases: [(&str, &str, String, &[u8]); 7] = [
        (
            "echo.txt",
            "bash",
            format!("echo hello > {g}/echo.txt"),
            b"hello\n",
        ),
        ("sh.txt", "sh", format!("echo x > {g}/sh.txt"), b"x\n"),
        (
            "printf.txt",
            "bash",
            format!("printf '%s-%d' abc 42 > {g}/printf.txt"),
            b"abc-42",
        ),
        (
            "external-printf.txt",
            "sh",
            format!("/usr/bin/printf 'out of a child\\n' > {g}/external-printf.txt"),
            b"out of a child\n",
        ),
        (
            "appended.txt",
            "bash",
            format!("exec 3> {g}/appended.txt; echo one >&3; echo two >&3; exec 3>&-"),
            b"one\ntwo\n",
        ),
        (
            "duped.txt",
            "bash",
            format!("exec 3> {g}/duped.txt; exec 4>&3; exec 3>&-; echo via-dup >&4; exec 4>&-"),
            b"via-dup\n",
        ),
        (
            "group.txt",
            "bash",
            format!("{{ echo a; /bin/true; echo b; }} > {g}/group.txt"),
            b"a\nb\n",
        ),
    ];
    for (name, shell, script, want) in &cases {
        ok(&a, shell, &["-c", script]);
        assert!(
            tracker_names(&w.fsd, w.trackers_file(), &u[1], "g").contains(*name),
            "{name} is not shared once `{shell} -c {script:?}` is done\n{}",
            a.log()
        );
        wait_content(&b.path(&format!("g/{name}")), want, &[&a, &b], String::new);
    }
}

/// Files whose writer closes without writing are shared at the last
/// close of the open file, with what is there: `touch`'s empty file, and
/// a file the shell opened and handed to a background child that writes
/// after the shell closed its own descriptor.
#[test]
fn touch_and_a_child_writing_after_the_opener_closed_share_at_the_last_close() {
    let (w, u) = World::network(&["alice", "bob"]);
    let a = w.mount(&u[0], &[]);
    let b = w.mount(&u[1], &[]);
    let g = s(&a.path("g")).to_string();
    ok(&a, "touch", &[&format!("{g}/empty.txt")]);
    ok(
        &a,
        "bash",
        &[
            "-c",
            &format!("exec 3> {g}/late.txt; (sleep 0.5; echo late >&3) & exec 3>&-; wait"),
        ],
    );
    wait_content(&b.path("g/empty.txt"), b"", &[&a, &b], String::new);
    wait_content(&b.path("g/late.txt"), b"late\n", &[&a, &b], String::new);
    // Shared now: immutable, as every shared file.
    let out = run("bash", &["-c", &format!("echo more >> {g}/late.txt")]);
    assert!(!out.status.success(), "a shared file took more bytes");
}
