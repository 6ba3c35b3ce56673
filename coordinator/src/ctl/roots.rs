//! `outpostctl root …`: the fleet's signed trust root ([`crate::fleet::roots`]). `show` reads
//! it; `draft` writes the next version with the changes asked for; `sign` adds a root key's
//! signature on the machine that keeps the key (offline); `push` hands the statement to the
//! coordinator, which verifies it as every device will and sends it out.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use outpost_shared::protocol::PublicKey;
use outpost_shared::protocol::root::{Role, SignedRoot};

use super::{Api, Cli, Failure, render};
use crate::http::api::roots::{OnlineKey, RootView};

#[derive(Debug, Subcommand)]
pub enum RootCommand {
    /// The current root: its keys per role, thresholds, signatures, and devices per version.
    Show,
    /// Write the next version (unsigned unless the coordinator holds a root key) with changes.
    #[command(
        after_help = "Examples:\n  outpostctl root draft --new-online-key --out root-2.json\n  outpostctl root draft --add-release-key $(outpostctl key show k2.pk8) --release-threshold 2 --out root-3.json"
    )]
    Draft(Box<DraftArgs>),
    /// Add the signature of a root key kept on this machine (works offline).
    Sign {
        file: PathBuf,
        /// The root key (PKCS#8, as `outpostctl key generate` writes it).
        #[arg(long)]
        key: PathBuf,
        /// Where to write (default: over FILE).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Hand a signed next version to the coordinator: verified as devices will, then sent out.
    Push { file: PathBuf },
}

#[derive(Debug, clap::Args)]
pub struct DraftArgs {
    /// Where to write the statement.
    #[arg(long)]
    pub out: PathBuf,
    /// Rotate the online key: the coordinator makes its next one, named here instead of the
    /// current one (it starts signing with it when the statement is pushed).
    #[arg(long)]
    pub new_online_key: bool,
    /// A release key to add (hex public key, as `outpostctl key show` prints; repeatable).
    #[arg(long = "add-release-key")]
    pub add_release: Vec<String>,
    /// A release key to remove (key id or hex public key; repeatable).
    #[arg(long = "remove-release-key")]
    pub remove_release: Vec<String>,
    /// How many distinct release keys must sign a bundle.
    #[arg(long)]
    pub release_threshold: Option<u32>,
    /// A root key to add (hex public key; repeatable).
    #[arg(long = "add-root-key")]
    pub add_root: Vec<String>,
    /// A root key to remove (key id or hex public key; repeatable).
    #[arg(long = "remove-root-key")]
    pub remove_root: Vec<String>,
    /// How many distinct root keys must sign the next root statements.
    #[arg(long)]
    pub root_threshold: Option<u32>,
}

fn key(text: &str, flag: &str) -> Result<PublicKey, Failure> {
    PublicKey::from_hex(text)
        .map_err(|e| Failure::Usage(format!("{flag} `{text}` is not an Ed25519 public key in hex: {e}")))
}

fn edit(
    role: &mut Role,
    add: &[String],
    remove: &[String],
    threshold: Option<u32>,
    name: &str,
) -> Result<(), Failure> {
    let mut keys = role.public_keys();
    for text in remove {
        let before = keys.len();
        keys.retain(|k| k.key_id() != text.trim() && hex::encode(k.as_bytes()) != text.trim().to_lowercase());
        if keys.len() == before {
            return Err(Failure::Usage(format!(
                "--remove-{name}-key `{text}`: not a {name} key of the current root"
            )));
        }
    }
    for text in add {
        let k = key(text, &format!("--add-{name}-key"))?;
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let threshold = threshold.unwrap_or(role.threshold);
    *role = Role::of(&keys, threshold);
    Ok(())
}

fn read(file: &Path) -> Result<SignedRoot, Failure> {
    let bytes =
        std::fs::read(file).map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
    SignedRoot::parse(&bytes).map_err(|e| Failure::Refused(format!("{}: {e}", file.display())))
}

fn write(file: &Path, root: &SignedRoot) -> Result<(), Failure> {
    outpost_shared::files::write_atomic(file, &root.to_bytes())
        .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", file.display())))
}

fn ids(role: &Role) -> String {
    role.public_keys().iter().map(PublicKey::key_id).collect::<Vec<_>>().join(", ")
}

fn describe(root: &SignedRoot) -> String {
    let r = &root.signed;
    let signers = root.signatures.iter().map(|s| s.key_id.as_str()).collect::<Vec<_>>().join(", ");
    format!(
        "version  {}\nissued   {}\nroot     {} of {}: {}\nrelease  {} of {}: {}\nonline   {}\nsigned   {}\n",
        r.version,
        crate::models::packaging::utc(r.issued_at_ms / 1000),
        r.root.threshold,
        r.root.keys.len(),
        ids(&r.root),
        r.release.threshold,
        r.release.keys.len(),
        ids(&r.release),
        ids(&r.online),
        if signers.is_empty() { "(unsigned)".into() } else { signers }
    )
}

/// `root sign`: needs no coordinator.
pub(super) fn sign(file: &Path, key: &Path, out: Option<&PathBuf>) -> Result<(), Failure> {
    let signing = crate::models::packaging::read_key(key).map_err(|e| Failure::Refused(e.to_string()))?;
    let mut root = read(file)?;
    root.sign(&signing);
    let out = out.map_or(file, PathBuf::as_path);
    write(out, &root)?;
    say!(
        "root version {} signed by key {} ({} signatures) → {}",
        root.version(),
        signing.key_id(),
        root.signatures.len(),
        out.display()
    );
    Ok(())
}

/// Runs one `root` command against the coordinator.
pub(super) fn run(cli: &Cli, api: &Api, command: &RootCommand) -> Result<(), Failure> {
    match command {
        RootCommand::Show => {
            let view: RootView = api.get("/api/v1/root")?;
            if cli.structured() {
                say!("{}", render(cli, &view));
                return Ok(());
            }
            say_raw!("{}", describe(&view.root));
            let devices: Vec<String> =
                view.devices_by_version.iter().map(|(v, n)| format!("{n} at {v}")).collect();
            say!("devices  {}", if devices.is_empty() { "none enrolled".into() } else { devices.join(", ") });
        }
        RootCommand::Draft(args) => {
            let view: RootView = api.get("/api/v1/root")?;
            let mut next = view.root.signed.next(crate::base::store::now_ms());
            if args.new_online_key {
                let online: OnlineKey = api.post_json("/api/v1/root/online-key", &serde_json::json!({}))?;
                next.online = Role::of(&[key(&online.online_key, "online key")?], 1);
            }
            edit(
                &mut next.release,
                &args.add_release,
                &args.remove_release,
                args.release_threshold,
                "release",
            )?;
            edit(&mut next.root, &args.add_root, &args.remove_root, args.root_threshold, "root")?;
            next.validate().map_err(|e| Failure::Usage(e.to_string()))?;
            let draft = SignedRoot::unsigned(next);
            write(&args.out, &draft)?;
            say_raw!("{}", describe(&draft));
            eprintln!(
                "draft written to {}: it needs {} signature(s) by the current root keys ({}) and {} by its own ({}) — \
                 `outpostctl root sign` where a key is kept, then `outpostctl root push` (the coordinator signs with \
                 pki/root.pk8 itself if it holds it)",
                args.out.display(),
                view.root.signed.root.threshold,
                ids(&view.root.signed.root),
                draft.signed.root.threshold,
                ids(&draft.signed.root)
            );
        }
        RootCommand::Push { file } => {
            let root = read(file)?;
            let accepted: SignedRoot = api.post_bytes("/api/v1/root", &root.to_bytes())?;
            if cli.structured() {
                say!("{}", render(cli, &accepted));
                return Ok(());
            }
            say_raw!("{}", describe(&accepted));
            eprintln!(
                "root version {} accepted; every enrolled device gets it with a new desired revision",
                accepted.version()
            );
        }
        RootCommand::Sign { file, key, out } => return sign(file, key, out.as_ref()),
    }
    Ok(())
}
