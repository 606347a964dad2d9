//! `--config FILE` (or `TETHER_CONFIG`): flags from a TOML file, one section per command:
//!
//! ```toml
//! [stub]
//! certs = "/etc/tether"
//! quic_listen = "0.0.0.0:7443"
//! max_requests_per_user = 500
//!
//! [agent]
//! cluster = "dev"
//! ```
//!
//! A key is a flag's long name (`quic_listen` or `quic-listen`); a list gives a repeated flag;
//! `true` sets a switch. The command line wins over the environment, which wins over the file.
//! An unknown section or key, or a value of the wrong kind, is an error naming the file, the
//! section and the key, before anything starts. The file is turned into flags and clap parses
//! them like any others, so every check and default is the same.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Why the file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the configuration file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not valid TOML: {message}", path.display())]
    Toml { path: PathBuf, message: String },
    #[error("{}: {problem}", path.display())]
    Content { path: PathBuf, problem: String },
}

/// Where `--config` points, if anywhere (the command line first, then `TETHER_CONFIG`).
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("TETHER_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The position of the subcommand in `args`, skipping `--config FILE` before it.
fn subcommand_at(args: &[OsString]) -> Option<usize> {
    let mut i = 1;
    while i < args.len() {
        let text = args[i].to_string_lossy();
        if text == "--config" {
            i += 2;
        } else if text.starts_with('-') {
            i += 1;
        } else {
            return Some(i);
        }
    }
    None
}

/// `args` with the flags of the config file (if there is one) added after the subcommand.
pub fn merged_args(args: Vec<OsString>, cli: &clap::Command) -> Result<Vec<OsString>, ConfigError> {
    let Some(path) = config_path(&args) else { return Ok(args) };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
    let Some(at) = subcommand_at(&args) else { return Ok(args) };
    let command = args[at].to_string_lossy().into_owned();
    let added = flags_from(&text, &path, cli, &command, &args[at + 1..])?;
    let mut merged = args[..=at].to_vec();
    merged.extend(added);
    merged.extend_from_slice(&args[at + 1..]);
    Ok(merged)
}

/// The flags the file gives `command`, leaving out those the command line or the environment
/// already set. Every section is checked, not only `command`'s, so a typo anywhere is found.
pub fn flags_from(
    text: &str,
    path: &Path,
    cli: &clap::Command,
    command: &str,
    given: &[OsString],
) -> Result<Vec<OsString>, ConfigError> {
    let content = |problem: String| ConfigError::Content { path: path.to_owned(), problem };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Toml { path: path.to_owned(), message: e.to_string() })?;
    // Commands with flags of their own (`certs` has only subcommands; global flags and --help
    // reach every one).
    let own_flag = |a: &clap::Arg| {
        a.get_long().is_some()
            && !a.is_global_set()
            && !matches!(a.get_action(), clap::ArgAction::Help | clap::ArgAction::Version)
    };
    let sections: Vec<&str> =
        cli.get_subcommands().filter(|c| c.get_arguments().any(own_flag)).map(|c| c.get_name()).collect();
    let mut flags = Vec::new();
    for (section, body) in &table {
        let Some(sub) = cli.find_subcommand(section).filter(|_| sections.contains(&section.as_str())) else {
            return Err(match body {
                toml::Value::Table(_) => {
                    content(format!("unknown section [{section}] (sections: {})", sections.join(", ")))
                }
                _ => content(format!("key `{section}` must be inside a section such as [stub] or [agent]")),
            });
        };
        let toml::Value::Table(keys) = body else {
            return Err(content(format!("`{section}` must be a section: [{section}]")));
        };
        for (key, value) in keys {
            let long = key.replace('_', "-");
            let arg = sub
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()) && long != "config" && !a.is_hide_set())
                .ok_or_else(|| content(format!("[{section}] unknown key `{key}` (see `tether {section} --help`)")))?;
            if section != command {
                continue;
            }
            let flag = format!("--{long}");
            let on_command_line = given.iter().any(|g| {
                let g = g.to_string_lossy();
                g == flag || g.starts_with(&format!("{flag}="))
            });
            let in_environment = arg.get_env().is_some_and(|name| std::env::var_os(name).is_some());
            if on_command_line || in_environment {
                continue;
            }
            let takes_value = arg.get_action().takes_values();
            let wrong = |what: &str| content(format!("[{section}] `{key}` must be {what}"));
            match value {
                toml::Value::Boolean(on) if !takes_value => {
                    if *on {
                        flags.push(OsString::from(&flag));
                    }
                }
                toml::Value::Boolean(_) => return Err(wrong("a value, not true or false")),
                _ if !takes_value => return Err(wrong("true or false")),
                toml::Value::Array(items) => {
                    for item in items {
                        flags.push(OsString::from(format!(
                            "{flag}={}",
                            scalar(item).ok_or_else(|| wrong("a list of plain values"))?
                        )));
                    }
                }
                other => flags
                    .push(OsString::from(format!("{flag}={}", scalar(other).ok_or_else(|| wrong("a plain value"))?))),
            }
        }
    }
    Ok(flags)
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cli() -> clap::Command {
        clap::Command::new("tether")
            .subcommand(
                clap::Command::new("stub")
                    .arg(clap::Arg::new("quic_listen").long("quic-listen"))
                    .arg(clap::Arg::new("grace").long("grace").env("TETHER_TEST_CONFIG_GRACE"))
                    .arg(clap::Arg::new("quiet").long("quiet").action(clap::ArgAction::SetTrue))
                    .arg(clap::Arg::new("group").long("group").action(clap::ArgAction::Append)),
            )
            .subcommand(clap::Command::new("agent").arg(clap::Arg::new("cluster").long("cluster")))
    }

    fn flags(text: &str, given: &[&str]) -> Result<Vec<String>, String> {
        let given: Vec<OsString> = given.iter().map(OsString::from).collect();
        flags_from(text, Path::new("t.toml"), &cli(), "stub", &given)
            .map(|f| f.into_iter().map(|s| s.into_string().unwrap()).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn keys_become_flags_and_the_command_line_wins() {
        let text =
            "[stub]\nquic_listen = \"0.0.0.0:1\"\nquiet = true\ngroup = [\"a\", \"b\"]\n[agent]\ncluster = \"dev\"\n";
        // Keys come in name order (the order does not matter to clap).
        assert_eq!(flags(text, &[]).unwrap(), ["--group=a", "--group=b", "--quic-listen=0.0.0.0:1", "--quiet"]);
        assert_eq!(flags(text, &["--quic-listen", "x"]).unwrap(), ["--group=a", "--group=b", "--quiet"]);
        assert_eq!(flags("[stub]\nquiet = false\n", &[]).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn mistakes_name_the_file_section_and_key() {
        assert_eq!(
            flags("[stub]\nquic_listn = \"x\"\n", &[]).unwrap_err(),
            "t.toml: [stub] unknown key `quic_listn` (see `tether stub --help`)"
        );
        assert!(flags("[agent]\nclustr = \"x\"\n", &[]).unwrap_err().contains("[agent] unknown key `clustr`"));
        assert!(flags("[stubb]\n", &[]).unwrap_err().contains("unknown section [stubb] (sections: stub, agent)"));
        assert!(flags("quic_listen = 1\n", &[]).unwrap_err().contains("key `quic_listen` must be inside a section"));
        assert!(flags("[stub]\nquiet = \"yes\"\n", &[]).unwrap_err().contains("`quiet` must be true or false"));
        assert!(flags("[stub]\nquic_listen = true\n", &[]).unwrap_err().contains("must be a value"));
        assert!(flags("[stub]\nquic_listen = \n", &[]).unwrap_err().starts_with("t.toml: not valid TOML"));
    }

    proptest! {
        #[test]
        fn any_text_gives_flags_or_an_error_naming_the_file(text in "\\PC{0,80}") {
            match flags(&text, &[]) {
                Ok(flags) => prop_assert!(flags.iter().all(|f| f.starts_with("--"))),
                Err(message) => prop_assert!(message.starts_with("t.toml: ")),
            }
        }
    }
}
