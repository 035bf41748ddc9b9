//! Helix with duet. First the configuration in `editors/helix/`: `languages.toml` must keep
//! Helix 25.07's own servers for every language it touches (setting `language-servers`
//! replaces Helix's list) and add duet after them, as recorded in `defaults.toml`. Each check
//! is a function that returns what is wrong; tests feed it broken copies of the files to show
//! that it notices.
//!
//! Then Helix in use: Helix itself cannot run here, so the scripted stand-in
//! (`duet_e2e::editor`, [`Kind::Helix`]) plays it against the real bridge and server — its
//! one-line status that the next message replaces, its workspace-symbol picker and
//! `window/showDocument` — to show that a Helix user finds what they need without reading logs.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use duet_e2e::editor::{wait_server_file, FakeEditor, Kind, Pos, WAIT};
use duet_e2e::eventually;
use duet_e2e::server::{Backend, Database, Server};
use duet_e2e::yclient::YClient;
use toml::{Table, Value};

/// The languages the configuration must cover.
const COMMON: &[&str] = &[
    "python",
    "javascript",
    "typescript",
    "tsx",
    "jsx",
    "rust",
    "go",
    "c",
    "cpp",
    "java",
    "ruby",
    "markdown",
    "json",
    "yaml",
    "toml",
    "html",
    "css",
    "bash",
    "lua",
    "make",
];

fn helix_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../editors/helix")
}

fn read(name: &str) -> String {
    let path = helix_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Both files as shipped: (languages.toml, defaults.toml).
fn shipped() -> (String, String) {
    (read("languages.toml"), read("defaults.toml"))
}

fn parse(src: &str, what: &str) -> Table {
    toml::from_str(src).unwrap_or_else(|e| panic!("{what} is not valid TOML: {e}"))
}

type Check = fn(&str, &str) -> Result<(), String>;

// ---------------------------------------------------------------------------------------------
// Reading the files

/// The `[[language]]` entries of languages.toml.
fn languages(src: &str) -> Vec<Table> {
    let doc = parse(src, "languages.toml");
    match doc.get("language") {
        Some(Value::Array(entries)) => entries
            .iter()
            .map(|e| match e {
                Value::Table(t) => t.clone(),
                other => panic!("a [[language]] entry is not a table: {other}"),
            })
            .collect(),
        Some(other) => panic!("`language` is not an array of tables: {other}"),
        None => Vec::new(),
    }
}

fn language_name(lang: &Table) -> Result<&str, String> {
    lang.get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("a [[language]] entry has no string `name`: {lang:?}"))
}

/// The one `[[language]]` entry with this name.
fn find_language<'a>(langs: &'a [Table], name: &str) -> Result<&'a Table, String> {
    let found: Vec<&Table> = langs
        .iter()
        .filter(|l| language_name(l).ok() == Some(name))
        .collect();
    match found.len() {
        1 => Ok(found[0]),
        0 => Err(format!("languages.toml has no [[language]] named {name:?}")),
        n => Err(format!(
            "languages.toml has {n} [[language]] entries named {name:?}"
        )),
    }
}

fn servers_of<'a>(lang: &'a Table, name: &str) -> Result<&'a Vec<Value>, String> {
    lang.get("language-servers")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{name}: no `language-servers` array"))
}

/// A server entry is either its name or a table such as
/// `{ name = "x", except-features = [...] }`.
fn server_name(entry: &Value) -> Option<&str> {
    match entry {
        Value::String(s) => Some(s),
        Value::Table(t) => t.get("name").and_then(Value::as_str),
        _ => None,
    }
}

/// The `[languages]` table of defaults.toml: language name -> Helix's default server list.
fn defaults(src: &str) -> Result<Table, String> {
    let doc = parse(src, "defaults.toml");
    match doc.get("languages") {
        Some(Value::Table(t)) if !t.is_empty() => Ok(t.clone()),
        _ => Err("defaults.toml has no non-empty [languages] table".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// The checks

/// `[language-server.duet]` starts `duet-lsp` and asks for peers as diagnostics.
fn check_duet_server(languages: &str, _defaults: &str) -> Result<(), String> {
    let doc = parse(languages, "languages.toml");
    let duet = doc
        .get("language-server")
        .and_then(|s| s.get("duet"))
        .and_then(Value::as_table)
        .ok_or("languages.toml has no [language-server.duet] table")?;
    match duet.get("command").and_then(Value::as_str) {
        Some("duet-lsp") => {}
        other => return Err(format!("duet's command is {other:?}, not \"duet-lsp\"")),
    }
    match duet.get("config").and_then(|c| c.get("peerDiagnostics")) {
        Some(Value::Boolean(true)) => Ok(()),
        other => Err(format!(
            "duet's config.peerDiagnostics is {other:?}, not true (Helix shows peers only \
             as diagnostics)"
        )),
    }
}

/// Every language in defaults.toml appears in languages.toml with exactly Helix's servers,
/// in order and in the same form, followed by "duet"; and every language but `text` has its
/// defaults recorded, so none can lose Helix's servers unnoticed.
fn check_defaults_kept(languages_src: &str, defaults_src: &str) -> Result<(), String> {
    let langs = languages(languages_src);
    let defaults = defaults(defaults_src)?;
    for (name, default) in &defaults {
        let default = default
            .as_array()
            .ok_or_else(|| format!("defaults.toml: {name} is not an array"))?;
        if default.iter().any(|s| server_name(s) == Some("duet")) {
            return Err(format!(
                "defaults.toml: {name} lists duet, which is not Helix's"
            ));
        }
        let lang = find_language(&langs, name)?;
        let servers = servers_of(lang, name)?;
        let mut expected = default.clone();
        expected.push(Value::String("duet".into()));
        if *servers != expected {
            return Err(format!(
                "{name}: language-servers is {}, expected Helix's defaults then duet: {}",
                Value::Array(servers.clone()),
                Value::Array(expected)
            ));
        }
    }
    for lang in &langs {
        let name = language_name(lang)?;
        if name != "text" && !defaults.contains_key(name) {
            return Err(format!(
                "{name} is in languages.toml but its Helix defaults are not in defaults.toml"
            ));
        }
    }
    Ok(())
}

/// A plain-text language for `.txt` files, with no glob that would take files from others.
fn check_text_language(languages: &str, _defaults: &str) -> Result<(), String> {
    let langs = self::languages(languages);
    let text = find_language(&langs, "text")?;
    if text.get("scope").and_then(Value::as_str) != Some("text.plain") {
        return Err(format!(
            "text: scope is {:?}, not \"text.plain\"",
            text.get("scope")
        ));
    }
    let file_types = text
        .get("file-types")
        .and_then(Value::as_array)
        .ok_or("text: no file-types array")?;
    if let Some(glob) = file_types.iter().find(|t| !t.is_str()) {
        return Err(format!(
            "text: file-types has a glob entry {glob}; it would take over other languages' files"
        ));
    }
    if !file_types.iter().any(|t| t.as_str() == Some("txt")) {
        return Err("text: file-types does not include \"txt\"".into());
    }
    match text.get("roots").and_then(Value::as_array) {
        Some(roots) if roots.is_empty() => {}
        other => return Err(format!("text: roots is {other:?}, not []")),
    }
    let servers = servers_of(text, "text")?;
    if *servers != [Value::String("duet".into())] {
        return Err(format!(
            "text: language-servers is {}, not [\"duet\"]",
            Value::Array(servers.clone())
        ));
    }
    Ok(())
}

/// Every language has duet once, as its last server; only `text` and the languages Helix gives
/// no server (an empty list in defaults.toml, such as `make`) have nothing but duet.
fn check_duet_alone_only_for_text(languages: &str, defaults_src: &str) -> Result<(), String> {
    let defaults = defaults(defaults_src)?;
    let serverless = |name: &str| {
        defaults
            .get(name)
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
    };
    for lang in self::languages(languages) {
        let name = language_name(&lang)?;
        let servers = servers_of(&lang, name)?;
        let names: Vec<Option<&str>> = servers.iter().map(server_name).collect();
        if names.iter().filter(|n| **n == Some("duet")).count() != 1
            || names.last() != Some(&Some("duet"))
        {
            return Err(format!("{name}: duet must be listed once, last: {names:?}"));
        }
        if names.len() == 1 && name != "text" && !serverless(name) {
            return Err(format!(
                "{name}: duet is its only server, which drops all of Helix's servers for it"
            ));
        }
    }
    Ok(())
}

/// The common languages are all configured, with their defaults recorded.
fn check_common_languages(languages: &str, defaults_src: &str) -> Result<(), String> {
    let names: BTreeSet<String> = self::languages(languages)
        .iter()
        .filter_map(|l| language_name(l).ok().map(str::to_owned))
        .collect();
    let defaults = defaults(defaults_src)?;
    for lang in COMMON {
        if !names.contains(*lang) {
            return Err(format!("{lang} is missing from languages.toml"));
        }
        if !defaults.contains_key(*lang) {
            return Err(format!("{lang} is missing from defaults.toml"));
        }
    }
    Ok(())
}

/// The file defines duet and per-language server lists, nothing more: it redefines none of
/// Helix's servers and, outside `text`, overrides no other language setting (a user's
/// languages.toml is merged over Helix's, key by key).
fn check_nothing_else_overridden(languages: &str, _defaults: &str) -> Result<(), String> {
    let doc = parse(languages, "languages.toml");
    for key in doc.keys() {
        if key != "language-server" && key != "language" {
            return Err(format!("languages.toml sets `{key}`"));
        }
    }
    if let Some(servers) = doc.get("language-server").and_then(Value::as_table) {
        if let Some(other) = servers.keys().find(|k| *k != "duet") {
            return Err(format!("languages.toml redefines Helix's server {other:?}"));
        }
    }
    for lang in self::languages(languages) {
        let name = language_name(&lang)?;
        if name == "text" {
            continue;
        }
        if let Some(key) = lang
            .keys()
            .find(|k| *k != "name" && *k != "language-servers")
        {
            return Err(format!("{name}: overrides Helix's `{key}`"));
        }
    }
    Ok(())
}

/// defaults.toml says which Helix it was taken from, in its data and its header comment.
fn check_defaults_source(_languages: &str, defaults_src: &str) -> Result<(), String> {
    let doc = parse(defaults_src, "defaults.toml");
    let source = doc
        .get("source")
        .and_then(Value::as_table)
        .ok_or("defaults.toml has no [source] table")?;
    if source.get("helix").and_then(Value::as_str) != Some("25.07") {
        return Err(format!(
            "defaults.toml: source.helix is {:?}, not \"25.07\"",
            source.get("helix")
        ));
    }
    let commit = source
        .get("commit")
        .and_then(Value::as_str)
        .ok_or("defaults.toml: no source.commit")?;
    if commit.len() != 40 || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "defaults.toml: source.commit {commit:?} is not a full commit id"
        ));
    }
    let header: String = defaults_src
        .lines()
        .take_while(|l| l.starts_with('#') || l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in ["Helix 25.07", "helix-editor/helix", commit] {
        if !header.contains(needle) {
            return Err(format!(
                "defaults.toml: the header comment does not name {needle:?}"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The shipped files pass every check

fn assert_ok(check: Check) {
    let (languages, defaults) = shipped();
    if let Err(e) = check(&languages, &defaults) {
        panic!("{e}");
    }
}

/// `config.toml`: `u` and `U` run duet's undo and redo of one's own edits (the commands the
/// bridge advertises, see `bridge_join`), in normal and select mode, and Helix's own undo and
/// redo stay on `A-u` and `A-U`.
#[test]
fn the_keymap_puts_duets_undo_on_u_and_keeps_helixs_own() {
    let keys = parse(&read("config.toml"), "config.toml");
    for mode in ["normal", "select"] {
        let map = keys["keys"][mode]
            .as_table()
            .unwrap_or_else(|| panic!("no [keys.{mode}]"));
        let key = |k: &str| map.get(k).and_then(Value::as_str);
        assert_eq!(key("u"), Some(":lsp-workspace-command duet.undo"), "{mode}");
        assert_eq!(key("U"), Some(":lsp-workspace-command duet.redo"), "{mode}");
        assert_eq!(
            (key("A-u"), key("A-U")),
            (Some("undo"), Some("redo")),
            "{mode}"
        );
    }
}

#[test]
fn duet_is_defined_as_duet_lsp_with_peer_diagnostics() {
    assert_ok(check_duet_server);
}

#[test]
fn every_language_keeps_helix_defaults_in_order_then_duet() {
    assert_ok(check_defaults_kept);
}

#[test]
fn text_is_a_plain_text_language_without_globs() {
    assert_ok(check_text_language);
}

#[test]
fn no_language_but_text_has_duet_as_its_only_server() {
    assert_ok(check_duet_alone_only_for_text);
}

#[test]
fn the_common_languages_are_all_configured() {
    assert_ok(check_common_languages);
}

#[test]
fn nothing_but_server_lists_is_overridden() {
    assert_ok(check_nothing_else_overridden);
}

#[test]
fn defaults_name_the_helix_version_and_commit_they_come_from() {
    assert_ok(check_defaults_source);
}

// ---------------------------------------------------------------------------------------------
// Broken copies of the files are caught

/// `src` with its only occurrence of `from` replaced by `to` (so a mutation that no longer
/// applies fails loudly instead of testing nothing).
fn replace_once(src: &str, from: &str, to: &str) -> String {
    assert_eq!(
        src.matches(from).count(),
        1,
        "expected {from:?} exactly once"
    );
    src.replacen(from, to, 1)
}

/// The shipped `[[language]]` entry for `name`: its name and language-servers lines.
fn entry(languages: &str, name: &str) -> String {
    let head = format!("name = \"{name}\"\n");
    let start = languages
        .find(&head)
        .unwrap_or_else(|| panic!("{name} not found"));
    let servers = languages[start..]
        .lines()
        .find(|l| l.starts_with("language-servers"))
        .unwrap();
    format!("{head}{servers}")
}

/// languages.toml with `name`'s server list replaced by `servers` (TOML source).
fn with_servers(languages: &str, name: &str, servers: &str) -> String {
    replace_once(
        languages,
        &entry(languages, name),
        &format!("name = \"{name}\"\nlanguage-servers = {servers}"),
    )
}

/// `check` fails on languages.toml broken by `break_it`, and the broken file still parses (so
/// it is the check that fails, not the parser).
fn assert_caught(check: Check, what: &str, break_it: impl Fn(&str) -> String) {
    let (languages, defaults) = shipped();
    let broken = break_it(&languages);
    parse(&broken, "the broken languages.toml");
    assert!(check(&broken, &defaults).is_err(), "missed: {what}");
}

#[test]
fn dropping_reordering_or_changing_a_default_server_is_caught() {
    let (languages, _) = shipped();
    assert_eq!(
        entry(&languages, "python"),
        "name = \"python\"\nlanguage-servers = [\"ty\", \"ruff\", \"jedi\", \"pylsp\", \"duet\"]"
    );
    let broken = [
        (
            "a dropped default server",
            r#"["ty", "ruff", "pylsp", "duet"]"#,
        ),
        (
            "reordered default servers",
            r#"["ruff", "ty", "jedi", "pylsp", "duet"]"#,
        ),
        (
            "an extra server",
            r#"["ty", "ruff", "jedi", "pylsp", "pyright", "duet"]"#,
        ),
        ("duet left out", r#"["ty", "ruff", "jedi", "pylsp"]"#),
        ("duet first", r#"["duet", "ty", "ruff", "jedi", "pylsp"]"#),
        (
            "a server as a table",
            r#"["ty", { name = "ruff" }, "jedi", "pylsp", "duet"]"#,
        ),
    ];
    for (what, servers) in broken {
        assert_caught(check_defaults_kept, what, |l| {
            with_servers(l, "python", servers)
        });
    }
    assert_caught(check_defaults_kept, "python removed", |l| {
        replace_once(
            l,
            &format!("\n[[language]]\n{}\n", entry(l, "python")),
            "\n",
        )
    });
    assert_caught(
        check_defaults_kept,
        "a language with no defaults recorded",
        |l| format!("{l}\n[[language]]\nname = \"sql\"\nlanguage-servers = [\"sqls\", \"duet\"]\n"),
    );
}

#[test]
fn a_default_in_table_form_must_be_copied_exactly() {
    let (languages, defaults) = shipped();
    let table = r#"{ name = "typescript-language-server", except-features = ["format"] }"#;
    let tabled_defaults = replace_once(
        &defaults,
        "typescript = [\"typescript-language-server\"]",
        &format!("typescript = [{table}]"),
    );
    assert!(
        check_defaults_kept(&languages, &tabled_defaults).is_err(),
        "a table-form default written as its plain name was missed"
    );
    let other_features = table.replace("format", "hover");
    let wrong = with_servers(
        &languages,
        "typescript",
        &format!("[{other_features}, \"duet\"]"),
    );
    assert!(
        check_defaults_kept(&wrong, &tabled_defaults).is_err(),
        "a table-form default with other features was missed"
    );
    let right = with_servers(&languages, "typescript", &format!("[{table}, \"duet\"]"));
    assert_eq!(check_defaults_kept(&right, &tabled_defaults), Ok(()));
    assert_eq!(
        check_duet_alone_only_for_text(&right, &tabled_defaults),
        Ok(())
    );
}

#[test]
fn a_wrong_duet_server_is_caught() {
    assert_caught(check_duet_server, "another command", |l| {
        replace_once(l, r#"command = "duet-lsp""#, r#"command = "duet""#)
    });
    assert_caught(check_duet_server, "peer diagnostics off", |l| {
        replace_once(l, "peerDiagnostics = true", "peerDiagnostics = false")
    });
    assert_caught(check_duet_server, "no config", |l| {
        replace_once(l, "config = { peerDiagnostics = true }", "")
    });
    assert_caught(check_duet_server, "no duet server", |l| {
        replace_once(l, "[language-server.duet]", "[language-server.duet-lsp]")
    });
}

#[test]
fn a_broken_text_language_is_caught() {
    let broken = [
        (
            "a catch-all glob",
            r#"file-types = ["txt"]"#,
            r#"file-types = ["txt", { glob = "*" }]"#,
        ),
        (
            "another scope",
            r#"scope = "text.plain""#,
            r#"scope = "source.text""#,
        ),
        (
            "no txt",
            r#"file-types = ["txt"]"#,
            r#"file-types = ["text"]"#,
        ),
        ("root markers", "roots = []", r#"roots = [".git"]"#),
        (
            "no text language",
            "name = \"text\"\n",
            "name = \"plaintext\"\n",
        ),
        (
            "another server",
            r#"name = "text"
scope = "text.plain"
file-types = ["txt"]
roots = []
language-servers = ["duet"]"#,
            r#"name = "text"
scope = "text.plain"
file-types = ["txt"]
roots = []
language-servers = ["harper-ls", "duet"]"#,
        ),
    ];
    for (what, from, to) in broken {
        assert_caught(check_text_language, what, |l| replace_once(l, from, to));
    }
}

#[test]
fn duet_alone_outside_text_is_caught() {
    assert_caught(check_duet_alone_only_for_text, "rust with duet only", |l| {
        with_servers(l, "rust", r#"["duet"]"#)
    });
    assert_caught(
        check_duet_alone_only_for_text,
        "a new duet-only language",
        |l| format!("{l}\n[[language]]\nname = \"sql\"\nlanguage-servers = [\"duet\"]\n"),
    );
    assert_caught(check_duet_alone_only_for_text, "duet twice", |l| {
        with_servers(l, "rust", r#"["rust-analyzer", "duet", "duet"]"#)
    });
    assert_caught(check_duet_alone_only_for_text, "duet not last", |l| {
        with_servers(l, "rust", r#"["duet", "rust-analyzer"]"#)
    });
}

/// A language Helix gives no server still needs its (empty) defaults recorded, and gets duet
/// alone only while they are empty.
#[test]
fn duet_alone_is_kept_to_languages_without_servers() {
    let (languages, defaults) = shipped();
    let make_has_a_server = replace_once(&defaults, "make = []", "make = [\"make-lsp\"]");
    assert!(check_duet_alone_only_for_text(&languages, &make_has_a_server).is_err());
    assert!(check_defaults_kept(&languages, &make_has_a_server).is_err());
    let make_unrecorded = replace_once(&defaults, "make = []\n", "");
    assert!(check_defaults_kept(&languages, &make_unrecorded).is_err());
}

#[test]
fn a_missing_common_language_is_caught() {
    assert_caught(check_common_languages, "lua removed", |l| {
        replace_once(l, &format!("\n[[language]]\n{}\n", entry(l, "lua")), "\n")
    });
    let (languages, defaults) = shipped();
    let no_lua_default = replace_once(&defaults, "lua = [\"lua-language-server\"]\n", "");
    assert!(check_common_languages(&languages, &no_lua_default).is_err());
}

#[test]
fn overriding_other_settings_is_caught() {
    assert_caught(
        check_nothing_else_overridden,
        "go's file types replaced",
        |l| {
            let go = entry(l, "go");
            replace_once(
                l,
                &go,
                &format!("{go}\nfile-types = [\"go\", {{ glob = \"*\" }}]"),
            )
        },
    );
    assert_caught(
        check_nothing_else_overridden,
        "a Helix server redefined",
        |l| format!("{l}\n[language-server.gopls]\ncommand = \"gopls\"\n"),
    );
    assert_caught(check_nothing_else_overridden, "a top-level setting", |l| {
        format!("use-grammars = {{ only = [\"rust\"] }}\n{l}")
    });
}

#[test]
fn defaults_without_their_source_are_caught() {
    let (languages, defaults) = shipped();
    let doc = parse(&defaults, "defaults.toml");
    let commit = doc["source"]["commit"].as_str().unwrap().to_owned();
    let short = replace_once(
        &defaults,
        &format!("commit = \"{commit}\""),
        &format!("commit = \"{}\"", &commit[..8]),
    );
    assert!(
        check_defaults_source(&languages, &short).is_err(),
        "a short commit id was missed"
    );
    let other_version = replace_once(&defaults, "helix = \"25.07\"", "helix = \"25.01\"");
    assert!(
        check_defaults_source(&languages, &other_version).is_err(),
        "another Helix version was missed"
    );
    let no_header: String = defaults
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        check_defaults_source(&languages, &no_header).is_err(),
        "a missing header comment was missed"
    );
}

// ---------------------------------------------------------------------------------------------
// Helix in use (the scripted stand-in against the real bridge and server)

async fn start_server() -> (Database, Server) {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    (db, server)
}

/// Helix logs every line a server writes on stderr as an error: under Helix the bridge logs to
/// `duet-lsp.log` beside `helix.log`, and stderr stays empty while nothing goes wrong. Other
/// editors still get the log on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_helix_the_log_goes_beside_helix_log_not_to_stderr() {
    let (_db, server) = start_server().await;
    let room = server.create_room_with(&[("a.py", "x = 1\n")]).await;
    let helix = FakeEditor::builder(Kind::Helix)
        .label("helix-log")
        .join(&server, &room, "a.py")
        .await;
    let file = std::fs::read_to_string(helix.helix_log_file()).unwrap_or_default();
    assert!(
        file.contains("joining") && file.contains("initialized"),
        "the bridge's log is not in {}: {file:?}",
        helix.helix_log_file().display()
    );
    assert!(
        !helix.stderr().contains(" INFO ") && !helix.stderr().contains(" DEBUG "),
        "the bridge still logs on stderr under Helix: {}",
        helix.stderr()
    );
    let vscode = FakeEditor::builder(Kind::VsCode)
        .label("vscode-log")
        .join(&server, &room, "a.py")
        .await;
    assert!(
        vscode.stderr().contains("joining"),
        "VS Code's bridge no longer logs on stderr: {}",
        vscode.stderr()
    );
    assert!(!vscode.helix_log_file().exists());
}

/// The room's history through workspace commands, as a Helix user runs them
/// (`:lsp-workspace-command duet.versions`, `duet.restore <version> [path]`): the versions as a
/// list to read, a restore that reaches the editor, and, back in a room after leaving it, which
/// files changed meanwhile and who changed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_restore_and_what_changed_while_away_through_workspace_commands() {
    use duet_e2e::yclient::YClient;
    use serde_json::json;
    use yrs::{Map, TextPrelim};

    const WAIT: std::time::Duration = std::time::Duration::from_secs(20);
    let (_db, server) = start_server().await;
    let room = server.create_room_with(&[("a.py", "x = 1\n")]).await;
    let helix = FakeEditor::builder(Kind::Helix)
        .label("ann")
        .join(&server, &room, "a.py")
        .await;
    let good = "x = 1\ny = 2\n";
    helix.type_text("a.py", 6, "y = 2\n").await;
    duet_e2e::eventually(WAIT, "the server to have the typing", || async {
        (server.file(&room, "a.py").await.as_deref() == Some(good)).then_some(())
    })
    .await;
    let saved = helix
        .execute_command("duet.saveVersion", json!(["good"]))
        .await
        .expect("duet.saveVersion");
    assert_eq!(saved["id"], json!(1), "{saved}");

    helix.replace("a.py", 0, good.chars().count(), "broken\n");
    duet_e2e::eventually(WAIT, "the server to have the damage", || async {
        (server.file(&room, "a.py").await.as_deref() == Some("broken\n")).then_some(())
    })
    .await;

    // The list: one line per version, in a popup that stays until dismissed.
    let mark = helix.mark();
    let listed = helix
        .execute_command("duet.versions", json!([]))
        .await
        .expect("duet.versions");
    assert_eq!(listed["versions"][0]["id"], json!(1), "{listed}");
    let popup = helix
        .wait_received_after(mark, "the list of versions", WAIT, |method, _| {
            method == "window/showMessageRequest"
        })
        .await;
    let line = popup.params["actions"][0]["title"]
        .as_str()
        .unwrap_or_default();
    assert!(
        line.starts_with("#1  ")
            && line.contains("ann")
            && line.contains("a.py")
            && line.ends_with("\"good\""),
        "{line}"
    );

    // A restore reaches the editor; the version before it holds the damage.
    let restored = helix
        .execute_command("duet.restore", json!([1, "a.py"]))
        .await
        .expect("duet.restore");
    assert_eq!(restored["restored"], json!(["a.py"]), "{restored}");
    duet_e2e::eventually(WAIT, "the restore to reach Helix", || async {
        (helix.text("a.py") == good).then_some(())
    })
    .await;
    helix
        .wait_message("the restore's notice", WAIT, |m| {
            m["message"].as_str().is_some_and(|m| {
                m.contains("restored a.py from version 1 (undo takes it back; version 2 holds")
            })
        })
        .await;
    let replaced = helix
        .execute_command("duet.versionText", json!([2, "a.py"]))
        .await
        .expect("duet.versionText");
    assert_eq!(replaced["text"], json!("broken\n"));
    let refused = helix
        .execute_command("duet.restore", json!(["nine"]))
        .await
        .expect_err("a version that is no number");
    assert!(
        refused.to_string().contains("needs a version number"),
        "{refused}"
    );

    // Away: Bob changes a file and adds one while Ann is out of the room.
    helix
        .execute_command("duet.leaveRoom", json!([]))
        .await
        .expect("duet.leaveRoom");
    let bob = YClient::join(&server.ws_url(&room)).await;
    bob.set_presence(json!({"user": {"name": "Bob"}}));
    bob.append("a.py", "z = 3\n");
    bob.transact(|txn, files| {
        files.insert(txn, "b.py", TextPrelim::new("b = 1\n"));
    });
    duet_e2e::eventually(WAIT, "the server to have Bob's edits", || async {
        server.file(&room, "b.py").await.map(|_| ())
    })
    .await;
    let mark = helix.mark();
    helix
        .execute_command("duet.joinRoom", json!([server.ws_url(&room)]))
        .await
        .expect("duet.joinRoom");
    let away = helix
        .wait_received_after(mark, "duet/away", WAIT, |method, _| method == "duet/away")
        .await;
    assert_eq!(
        away.params["files"],
        json!([{"path": "a.py", "change": "changed"}, {"path": "b.py", "change": "added"}])
    );
    assert_eq!(away.params["authors"], json!(["Bob"]));
    helix
        .wait_message("the welcome back", WAIT, |m| {
            m["message"]
                .as_str()
                .is_some_and(|m| m.contains("while you were away, Bob changed a.py, b.py (added)"))
        })
        .await;
    let mark = helix.mark();
    helix
        .execute_command("duet.away", json!([]))
        .await
        .expect("duet.away");
    let popup = helix
        .wait_received_after(mark, "the list of what changed", WAIT, |method, _| {
            method == "window/showMessageRequest"
        })
        .await;
    assert_eq!(popup.params["actions"][0]["title"], json!("a.py (changed)"));
    let before = helix
        .execute_command("duet.awayText", json!(["a.py"]))
        .await
        .expect("duet.awayText");
    assert_eq!(before["text"], json!(good));
    drop(bob);
}

fn presence(name: &str, file: &str, at: u32) -> serde_json::Value {
    serde_json::json!({"user": {"name": name, "color": "#61afef"},
           "cursor": {"file": file, "anchor": at, "head": at}})
}

/// A UTF-16 offset of `needle` in `text`.
fn utf16_at(text: &str, needle: &str) -> u32 {
    text[..text.find(needle).expect("needle")]
        .encode_utf16()
        .count() as u32
}

const MAIN: &str = "import util\nprint(util.f())\n";
const UTIL: &str = "def f():\n    return 1\n";

/// A room made over REST with main.py and lib/util.py, and Helix (its folder holding none of
/// them) in it with main.py open.
async fn helix_in_a_room_of_two_files(
    label: &str,
) -> (Database, Server, duet_e2e::server::RoomRef, FakeEditor) {
    let (db, server) = start_server().await;
    let room = server
        .create_room_with(&[("main.py", MAIN), ("lib/util.py", UTIL)])
        .await;
    let helix = FakeEditor::builder(Kind::Helix)
        .label(label)
        .join(&server, &room, "main.py")
        .await;
    (db, server, room, helix)
}

/// A room made with curl holds a file Helix's folder lacks: the workspace-symbol picker lists
/// the room's files (filtered by what is typed), and picking one opens it with the room's text,
/// creating it in the folder; typing in it reaches the room. A file a peer adds later is
/// announced, and listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helix_lists_and_opens_the_rooms_files_with_the_symbol_picker() {
    let (_db, server, room, helix) = helix_in_a_room_of_two_files("helix-files").await;
    assert!(!helix.workspace().join("lib/util.py").exists());

    let all = helix.workspace_symbols("").await;
    let names: Vec<&str> = all.iter().filter_map(|s| s["name"].as_str()).collect();
    assert!(
        names.contains(&"main.py") && names.contains(&"lib/util.py"),
        "{names:?}"
    );
    let typed = helix.workspace_symbols("utl").await;
    let names: Vec<&str> = typed.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["lib/util.py"], "what 'utl' keeps");

    helix.pick_symbol(&typed[0]);
    helix.wait_text("lib/util.py", UTIL, WAIT).await;
    assert_eq!(
        std::fs::read_to_string(helix.workspace().join("lib/util.py"))
            .ok()
            .as_deref(),
        Some(UTIL),
        "the file is created in the folder with the room's text"
    );
    helix.type_text("lib/util.py", 0, "# shared\n").await;
    let expected = format!("# shared\n{UTIL}");
    wait_server_file(&server, &room, "lib/util.py", &expected, WAIT, &[&helix]).await;

    let bob = YClient::join(&server.ws_url(&room)).await;
    bob.insert("notes.txt", 0, "todo\n");
    helix
        .wait_message("the new file announced", WAIT, |m| {
            m["message"].as_str() == Some("duet: new in the room: notes.txt")
        })
        .await;
    let names: Vec<String> = helix
        .workspace_symbols("notes")
        .await
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(names, ["notes.txt"]);
    helix.assert_no_violations();
}

/// `duet.jump` takes Helix to a peer's cursor (through `window/showDocument`), opening the
/// peer's file — created from the room's text when the folder lacks it; the picker lists the
/// peer too. `duet.follow` takes it along to each new line or file of the peer's, until the
/// user types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helix_jumps_to_and_follows_a_peer() {
    let (_db, server, room, helix) = helix_in_a_room_of_two_files("helix-jump").await;
    let bob = YClient::join(&server.ws_url(&room)).await;
    bob.set_presence(presence("bob", "lib/util.py", utf16_at(UTIL, "return")));
    let symbols = eventually(WAIT, "bob in the symbol picker", || async {
        let symbols = helix.workspace_symbols("bob").await;
        (!symbols.is_empty()).then_some(symbols)
    })
    .await;
    assert_eq!(symbols[0]["name"], "@bob lib/util.py:2", "{symbols:?}");

    helix
        .execute_command("duet.jump", serde_json::json!(["bob"]))
        .await
        .unwrap_or_else(|e| panic!("duet.jump: {e}\n{}", helix.report()));
    let shown = eventually(WAIT, "Helix at bob's cursor", || async {
        helix.shown().filter(|(path, _)| path == "lib/util.py")
    })
    .await;
    assert_eq!(shown.1, Pos::new(1, 4), "line 2, at `return`");
    helix.wait_text("lib/util.py", UTIL, WAIT).await;
    assert!(helix.workspace().join("lib/util.py").exists());

    helix
        .execute_command("duet.follow", serde_json::json!(["bo"]))
        .await
        .unwrap_or_else(|e| panic!("duet.follow: {e}\n{}", helix.report()));
    bob.set_presence(presence("bob", "main.py", utf16_at(MAIN, "print")));
    eventually(WAIT, "Helix following bob into main.py", || async {
        helix
            .shown()
            .filter(|(path, at)| path == "main.py" && *at == Pos::new(1, 0))
    })
    .await;
    // Typing stops following.
    helix.type_text("main.py", 0, "#").await;
    helix
        .wait_message("following ends", WAIT, |m| {
            m["message"]
                .as_str()
                .is_some_and(|t| t.contains("no longer following"))
        })
        .await;
    bob.set_presence(presence("bob", "lib/util.py", 0));
    // Bob's move reaches the bridge (the picker shows it) and Helix stays where it was.
    eventually(WAIT, "bob's move", || async {
        let symbols = helix.workspace_symbols("bob").await;
        (symbols.first()?["name"] == "@bob lib/util.py:1").then_some(())
    })
    .await;
    assert_eq!(helix.shown().map(|(p, _)| p).as_deref(), Some("main.py"));
    helix.assert_no_violations();
}

/// Helix's status line keeps a message only until the next: the invite that `duet.createRoom`
/// shows is gone at once. The readable status is a file Helix opens (`duet.status`), with the
/// invite on a line of its own to copy, the peers with their files and lines, the shared
/// files, and the messages that went by; while offline every shared file carries a warning
/// that lasts until the connection is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helix_reads_the_status_the_invite_and_a_lasting_offline_sign() {
    let (_db, mut server) = start_server().await;
    // As the shipped languages.toml configures duet.
    let config = parse(&read("languages.toml"), "languages.toml");
    let options = serde_json::to_value(&config["language-server"]["duet"]["config"]).unwrap();
    let helix = FakeEditor::builder(Kind::Helix)
        .label("helix-status")
        .init_options(options)
        .start()
        .await;
    helix.open("main.py", MAIN);
    let created = helix
        .execute_command("duet.createRoom", serde_json::json!([server.url("")]))
        .await
        .unwrap_or_else(|e| panic!("duet.createRoom: {e}\n{}", helix.report()));
    let invite = created["invite"].as_str().expect("an invite").to_string();
    helix.wait_connected(WAIT).await;
    let line = helix.status_line().unwrap_or_default();
    assert!(
        line.contains("joined room"),
        "the status line moved on to: {line:?}"
    );
    // The status, opened in Helix at once, holds it.
    eventually(WAIT, "the status opened after the creation", || async {
        helix.shown().filter(|(path, _)| path == ".duet/status.md")
    })
    .await;
    let status_file = helix.workspace().join(".duet/status.md");
    let text = std::fs::read_to_string(&status_file).unwrap_or_default();
    assert!(
        text.lines().any(|l| l == invite),
        "the invite on a line of its own in {}:\n{text}",
        status_file.display()
    );
    // The token is in that file: git is told to leave the folder alone.
    assert_eq!(
        std::fs::read_to_string(helix.workspace().join(".duet/.gitignore")).ok(),
        Some("*\n".to_string())
    );

    let room = duet_e2e::server::RoomRef {
        id: invite
            .split("/ws/")
            .nth(1)
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .into(),
        token: invite.split("token=").nth(1).unwrap().into(),
    };
    let bob = YClient::join(&server.ws_url(&room)).await;
    bob.set_presence(presence("bob", "main.py", utf16_at(MAIN, "print")));
    let status = eventually(WAIT, "bob in the status", || async {
        let status = helix
            .execute_command("duet.status", serde_json::json!([]))
            .await
            .ok()?;
        status["text"]
            .as_str()?
            .contains("- bob — main.py:2")
            .then_some(status)
    })
    .await;
    eventually(WAIT, "the status opened in Helix", || async {
        helix.shown().filter(|(path, _)| path == ".duet/status.md")
    })
    .await;
    assert!(helix.is_open(".duet/status.md"));
    let text = std::fs::read_to_string(&status_file).unwrap();
    assert_eq!(Some(text.as_str()), status["text"].as_str());
    for needle in [
        "· connected since ",
        "- main.py — shared",
        "room created",
        "duet-lsp.log",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
    // docs/screenshots/helix-status.md is this file.
    let snapshot = std::env::var_os("DUET_HELIX_STATUS_SNAPSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("duet-helix-status.md"));
    std::fs::write(&snapshot, &text).expect("snapshot");
    // The status file itself is not shared.
    assert!(server.file(&room, ".duet/status.md").await.is_none());

    server.terminate().await;
    let main_uri = helix.uri("main.py");
    let warning = helix
        .wait_received_after(0, "the offline warning", Duration::from_secs(20), |m, p| {
            m == "textDocument/publishDiagnostics"
                && p["uri"].as_str() == Some(main_uri.as_str())
                && p["diagnostics"].as_array().is_some_and(|d| {
                    d.iter().any(|d| {
                        d["severity"] == 2
                            && d["message"]
                                .as_str()
                                .is_some_and(|m| m.contains("offline since"))
                    })
                })
        })
        .await;
    let mark = helix.mark();
    helix.type_text("main.py", 0, "# offline\n").await;
    // The sign lasts: nothing takes it back while offline.
    assert!(!helix.received()[mark..]
        .iter()
        .any(|r| r.method == "textDocument/publishDiagnostics"
            && r.params["uri"] == warning.params["uri"]
            && !r.params.to_string().contains("offline since")));
    eventually(WAIT, "offline in the status file", || async {
        std::fs::read_to_string(&status_file)
            .ok()?
            .contains("· offline since ")
            .then_some(())
    })
    .await;
    server.restart().await;
    helix.wait_connected(Duration::from_secs(30)).await;
    helix
        .wait_received_after(mark, "the offline warning gone", WAIT, |m, p| {
            m == "textDocument/publishDiagnostics"
                && p["uri"] == warning.params["uri"]
                && !p.to_string().contains("offline since")
        })
        .await;
    wait_server_file(
        &server,
        &room,
        "main.py",
        &format!("# offline\n{MAIN}"),
        WAIT,
        &[&helix],
    )
    .await;
    helix.assert_no_violations();
}
