//! Every command the README shows runs as written: each `scripts/...` path it names exists and
//! is executable in git (mode 100755, so a fresh clone can run it), each `tether ...` command in
//! its fenced code blocks parses with the real command line (`tether::cli::Cli`), and each
//! `tether ...` command in its inline code (the command table, with placeholders such as `DIR`)
//! names a subcommand that exists and only flags that subcommand takes.

use std::collections::BTreeSet;
use std::path::Path;

use clap::FromArgMatches;
use tether::cli::Cli;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The command lines of the fenced shell blocks (```sh): continuation lines joined, comments
/// dropped. Other blocks (the layout, TOML, sample output) are not commands.
fn fenced_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let (mut in_block, mut in_shell) = (false, false);
    let mut pending = String::new();
    for line in text.lines() {
        if let Some(language) = line.trim_start().strip_prefix("```") {
            in_block = !in_block;
            in_shell = in_block && matches!(language.trim(), "sh" | "bash" | "shell");
            continue;
        }
        if !in_shell {
            continue;
        }
        let code = line.split(" #").next().unwrap().trim_end();
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
        } else {
            pending.push_str(code);
            lines.push(std::mem::take(&mut pending));
        }
    }
    lines
}

/// Words of a shell command line, quotes honoured, with the command substitution's inside
/// taken as its own line: `T=$(tether token ...)` gives `tether token ...`.
fn tether_invocations(line: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for part in line.split("$(").flat_map(|p| p.split(')')) {
        let words = shell_words(part);
        let Some(at) = words.iter().position(|w| w == "tether" || w.ends_with("/tether")) else { continue };
        let mut args: Vec<String> = Vec::new();
        for word in &words[at + 1..] {
            // Redirections and backgrounding end the command.
            if word.starts_with('>') || word.starts_with('<') || word == "&" || word == "|" || word == ";" {
                break;
            }
            args.push(word.clone());
        }
        found.push(args);
    }
    found
}

fn shell_words(text: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut any) = (Vec::new(), String::new(), None::<char>, false);
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            (None, c) => word.push(c),
        }
    }
    if any || !word.is_empty() {
        words.push(word);
    }
    words
}

/// The contents of inline code spans (`...`) outside fenced blocks.
fn inline_code(text: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            continue;
        }
        let mut parts = line.split('`');
        parts.next();
        while let (Some(code), Some(_)) = (parts.next(), parts.next()) {
            spans.push(code.replace("\\|", "|"));
        }
    }
    spans
}

#[test]
fn every_script_the_readme_names_exists_and_is_executable_in_git() {
    let text = readme();
    let mut scripts = BTreeSet::new();
    for (i, _) in text.match_indices("scripts/") {
        let name: String =
            text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-')).collect();
        if name.ends_with(".sh") {
            scripts.insert(name);
        }
    }
    assert!(scripts.contains("scripts/demo.sh") && scripts.contains("scripts/test.sh"), "{scripts:?}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for script in &scripts {
        assert!(root.join(script).is_file(), "README names {script}, which does not exist");
        let listed =
            std::process::Command::new("git").args(["ls-files", "-s", script]).current_dir(root).output().unwrap();
        let mode = String::from_utf8_lossy(&listed.stdout).split_whitespace().next().unwrap_or("").to_owned();
        assert_eq!(mode, "100755", "{script} must be committed executable (git update-index --chmod=+x {script})");
    }
}

#[test]
fn every_tether_command_in_the_readmes_code_blocks_parses() {
    let mut checked = 0;
    for line in fenced_lines(&readme()) {
        for args in tether_invocations(&line) {
            let argv = std::iter::once("tether".to_owned()).chain(args.iter().cloned());
            if let Err(e) = tether::cli::command().try_get_matches_from(argv).and_then(|m| Cli::from_arg_matches(&m)) {
                panic!("README: `tether {}` does not parse:\n{e}", args.join(" "));
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} tether commands found in code blocks");
}

#[test]
fn every_tether_command_in_the_readmes_text_names_real_subcommands_and_flags() {
    let mut cli = tether::cli::command();
    cli.build(); // global flags (--config, --log-format) reach every subcommand
    let mut checked = 0;
    for span in inline_code(&readme()) {
        let words = shell_words(&span);
        if words.first().map(String::as_str) != Some("tether") || words.len() < 2 {
            continue;
        }
        // The subcommand path: words that name a subcommand, from the top.
        let mut command = &cli;
        let mut path = vec!["tether"];
        for word in &words[1..] {
            match command.find_subcommand(word) {
                Some(sub) => {
                    command = sub;
                    path.push(word);
                }
                None => break,
            }
        }
        if path.len() == 1 && words[1].starts_with('<') {
            continue; // `tether <command> --help`: a placeholder, not a command
        }
        assert!(path.len() > 1, "README: `{span}` names no tether subcommand");
        let takes: BTreeSet<String> = command.get_arguments().filter_map(|a| a.get_long().map(str::to_owned)).collect();
        for word in &words {
            // Flags, also inside optional groups ([--flag X]) and alternatives (--a|--b).
            for flag in word.trim_matches(|c| matches!(c, '[' | ']' | '(' | ')')).split('|') {
                let Some(name) = flag.trim_matches(|c| matches!(c, '[' | ']' | '(' | ')')).strip_prefix("--") else {
                    continue;
                };
                let name = name.split('=').next().unwrap();
                if name.is_empty() || name == "help" || name == "version" {
                    continue;
                }
                assert!(takes.contains(name), "README: `{span}`: `{}` takes no --{name}", path.join(" "));
            }
        }
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} tether commands found in the README's text");
}

#[test]
fn the_readers_find_what_they_should() {
    assert_eq!(shell_words(r#"a "b c" 'd' e"#), ["a", "b c", "d", "e"]);
    assert_eq!(
        tether_invocations("T=$(target/debug/tether token --user alice --cluster dev)"),
        [["token", "--user", "alice", "--cluster", "dev"]]
    );
    assert_eq!(tether_invocations("tether stub --x y > out &"), [["stub", "--x", "y"]]);
    assert_eq!(fenced_lines("```sh\na \\\n  b # c\n```\n"), ["a    b"]);
    assert!(fenced_lines("```\nsrc/bench/  tether bench: workers\n```\n").is_empty());
    assert_eq!(inline_code("x `tether a --b` y `c`"), ["tether a --b", "c"]);
}
