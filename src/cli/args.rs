//! The command line, as plain data (clap derive). Nothing here acts: `commands` resolves these
//! into validated requests and runs them.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
Exit codes:
  0    success
  1    failure at run time (a cloud or SSH error, a remote command that failed)
  2    bad input or refused by policy (nothing was created)
  130  interrupted by ^C (a launch rolls back first; 143 for SIGTERM, 129 for SIGHUP);
       proxy runs until ^C, its normal end: 0

Environment:
  STRATUS_CONFIG  site config file (default /etc/stratus/config.toml)
  STRATUS_HOME    state directory (default $XDG_DATA_HOME/stratus or ~/.local/share/stratus)
  RUST_LOG        log filter, overriding -v";

#[derive(Debug, Parser)]
#[command(
    name = "stratus",
    version,
    about = "Launch Hadoop clusters on EC2, or on this machine, for a class",
    after_help = AFTER_HELP,
    propagate_version = true
)]
pub struct Cli {
    /// Site config file (overrides STRATUS_CONFIG)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More log output (-v info, -vv debug, -vvv trace)
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Print only results and errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Launch a master and N workers
    LaunchCluster(LaunchCluster),
    /// Launch a cluster's master only (add workers with launch-slaves)
    LaunchMaster(LaunchMaster),
    /// Add N workers to a running cluster and update the master's workers file
    LaunchSlaves {
        name: String,
        count: u32,
        /// Instructors: a cluster of this user
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
    },
    /// List live clusters and those that ended in the last 24 hours, or one cluster's nodes
    List {
        name: Option<String>,
        /// Every cluster, ended ones included
        #[arg(long)]
        all: bool,
        /// Instructors: this user's clusters
        #[arg(long, value_name = "USER", conflicts_with = "everyone")]
        owner: Option<String>,
        /// Instructors: every user's clusters
        #[arg(long)]
        everyone: bool,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Open a shell on the master (runs the system ssh with the cluster's key and pinned host key)
    Login {
        name: String,
        /// Options for ssh and a remote command, after -- (as `ssh HOST [OPTIONS] [COMMAND]`
        /// reads them); the key, known_hosts file and strict host key checking stratus sets stay
        #[arg(last = true, value_name = "SSH_ARGS")]
        ssh_args: Vec<String>,
    },
    /// Run a command on the master, or on every node with --all
    Exec {
        name: String,
        /// Run on every node, not just the master
        #[arg(long)]
        all: bool,
        /// Machine-readable output: one object per node with its exit status and output
        #[arg(long)]
        json: bool,
        /// The command, after --; its words are joined with spaces, as ssh does
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// A SOCKS5 proxy on 127.0.0.1 into the cluster, through SSH to the master (for the web UIs)
    Proxy {
        name: String,
        /// Local port (0 picks a free one and prints it)
        #[arg(long, default_value_t = 6666)]
        port: u16,
    },
    /// Copy a file to the master (or every node with --all)
    Push {
        name: String,
        file: PathBuf,
        /// Destination path on the node (default: the file's name, in the home directory)
        dest: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Rewrite the master's workers file from the running workers
    UpdateSlavesFile { name: String },
    /// Terminate every node of a cluster and delete its resources
    TerminateCluster {
        name: String,
        /// Do not ask for confirmation
        #[arg(long, short = 'y', alias = "force")]
        yes: bool,
        /// Instructors: a cluster of this user
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
    },
    /// Give a live cluster more time before its deadline (30m, 2h, 1h30m), within the policy
    Extend {
        name: String,
        /// How much more: 30m, 2h, 1h30m
        duration: String,
        /// Instructors: a cluster of this user
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
        /// Print the result as JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove what is left of a cluster that no longer runs: instances, security group, key pair
    DeleteCluster { name: String },
    /// Finish or undo what a crash or an interrupted command left behind (stuck launches,
    /// unrecorded instances, resources of clusters that are gone)
    Reconcile {
        /// Only say what would be done
        #[arg(long)]
        dry_run: bool,
        /// Machine-readable output: what was done
        #[arg(long)]
        json: bool,
    },
    /// Instance hours and estimated cost per cluster
    Usage {
        #[arg(long)]
        json: bool,
        /// Instructors: this user's clusters
        #[arg(long, value_name = "USER", conflicts_with = "everyone")]
        owner: Option<String>,
        /// Instructors: every user's clusters
        #[arg(long)]
        everyone: bool,
    },
    /// Your own AWS identity for the class: an IAM user that can describe the class's
    /// instances and use your prefix of the class's S3 bucket, never launch
    Identity {
        #[command(subcommand)]
        action: IdentityAction,
    },
    /// Your own EC2 key pairs (<login>.<name>): the private key only in your ~/.ssh
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Your limits under the site's policy, what you use, and what is left
    Quota {
        #[arg(long)]
        json: bool,
        /// Instructors: what this user resolves to (their own table, groups, or the default)
        #[arg(long, value_name = "USER")]
        user: Option<String>,
    },
    /// Hours and cost of every instance: cron's snapshot and reaper, the instructors' report
    Accounting {
        #[command(subcommand)]
        action: AccountingAction,
    },
    /// For instructors and administrators: the audit trail, the install of the privileged path
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Serve one request of the privileged path (exec'd by the setuid wrapper, with the
    /// install's `--config`, fixed at install time; not for direct use)
    #[command(name = "runner", hide = true)]
    Runner,
    /// Run the class service: the privileged side of a multi-user install, as the service
    /// account, on the Unix socket `[service] socket` (started by systemd's stratus.socket, or
    /// any supervisor)
    Serve,
    /// List cluster profiles, or show one resolved
    Profiles {
        #[command(subcommand)]
        action: Option<ProfilesAction>,
    },
    /// Run a local node (started by the local provider; not for direct use)
    #[command(name = "__node", hide = true)]
    Node { dir: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum AccountingAction {
    /// Record every instance's state and hours (cron: every 5 minutes)
    Snapshot {
        #[arg(long)]
        json: bool,
    },
    /// Hours and cost by cluster, user, profile or day (instructors)
    Report {
        #[arg(long, value_enum, default_value = "cluster")]
        by: crate::accounting::report::By,
        /// From this time on (a date, or RFC 3339)
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Up to this time (a date, or RFC 3339)
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// The term's close: the policy's term (term_start to term_end), by user, with the
        /// estimated share apart
        #[arg(long, conflicts_with_all = ["since", "until", "by"])]
        term: bool,
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        #[arg(long)]
        json: bool,
    },
    /// Warn, then terminate, clusters past their lifetime or their owner's budget (cron: every
    /// 15 minutes)
    Reap {
        /// Only say what would be done
        #[arg(long)]
        dry_run: bool,
        /// Instances of this store no record knows: report them, or terminate them (default:
        /// the policy's `[reaper] orphans`, else report)
        #[arg(long, value_enum)]
        orphans: Option<crate::accounting::reaper::Orphans>,
        /// One JSON line per action
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminAction {
    /// Every live cluster of the class, what needs attention first (instructors only)
    Class {
        #[arg(long)]
        json: bool,
    },
    /// The decisions of the privileged path, as JSON lines with --json (instructors only)
    Audit {
        #[arg(long)]
        json: bool,
        /// From this time on (RFC 3339, or a date like 2026-11-01)
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
    /// Install the privileged path: the CLI, the setuid wrapper, the site config, the policy,
    /// the credentials file and the state directory (root only; idempotent)
    Install {
        /// Where to install (default /usr/local, with the config in /etc/stratus and the state in
        /// /var/lib/stratus)
        #[arg(long, value_name = "DIR")]
        prefix: Option<PathBuf>,
        /// The service account that holds the AWS credentials (created if missing)
        #[arg(long, value_name = "NAME", default_value = "stratus")]
        service_user: String,
        /// The setuid wrapper binary to install (default: stratus-wrap beside this binary)
        #[arg(long, value_name = "FILE")]
        wrapper: Option<PathBuf>,
    },
    /// The IAM policy the service account needs, as IAM JSON: generated from the site config,
    /// the class policy and the state database's id
    IamPolicy,
    /// The students' own AWS identities
    Identities {
        #[command(subcommand)]
        action: IdentitiesAction,
    },
    /// Images that boot a profile with its software installed
    Image {
        #[command(subcommand)]
        action: ImageAction,
    },
    /// Before a lab: check that the account can take N students' clusters of a profile (image,
    /// instance types in the subnets' zones, free addresses, the security group, the vCPU
    /// quota, the class policy) and what they cost; exit 1 if a check fails
    Preflight {
        /// How many students launch a cluster each
        #[arg(long, value_name = "N")]
        students: u32,
        /// The profile the class launches
        #[arg(long, short = 'p')]
        profile: String,
        /// Workers per cluster (default: the policy's max_nodes less the master, else 2)
        #[arg(long, value_name = "W")]
        workers: Option<u32>,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Check every owner and mode of an install; exit 1 naming each problem
    Doctor {
        /// The install to check (default /usr/local, with the config in /etc/stratus and the
        /// state in /var/lib/stratus)
        #[arg(long, value_name = "DIR")]
        prefix: Option<PathBuf>,
        /// The service account the install should belong to (default: the one the installed
        /// wrapper names, else stratus)
        #[arg(long, value_name = "NAME")]
        service_user: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum IdentitiesAction {
    /// The shipped IAM policy of the students' group, as IAM JSON, from the site config's
    /// [identities] table: describe-only on EC2, S3 only under the bucket's <login>/ prefix,
    /// never RunInstances, IAM, or another owner's instances
    Policy,
    /// Make the IAM users of the roster's logins and remove those who left it (their keys
    /// first); running it twice changes nothing the second time
    Sync {
        /// One login per line, or a CSV file with a `login` column
        #[arg(long, value_name = "FILE")]
        roster: PathBuf,
        /// Print the plan; change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Every student's IAM user, key ids and key ages, and whether their files are in place
    List {
        #[arg(long)]
        json: bool,
    },
    /// Rotate every key older than DAYS (as root: each student's files are rewritten as the
    /// student); goes on past a failure and reports it at the end
    Rotate {
        #[arg(long, value_name = "DAYS")]
        older_than: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Make a key pair; its private key goes into ~/.ssh/stratus-NAME (mode 0600), and
    /// `launch-cluster --key NAME` authorises it on a cluster's nodes
    Create { name: String },
    /// Your key pairs
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete one of your key pairs in EC2 (its private key file stays yours to remove)
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum IdentityAction {
    /// Make your IAM user and an access key, and write them into ~/.aws/credentials and
    /// ~/.aws/config as the profile `stratus` (other profiles kept)
    Init,
    /// A new access key: made, written into your files, checked, then the old one deleted
    Rotate,
    /// Your IAM user, its groups, and your key ids and their ages (never a secret)
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Delete your access keys, your group membership and your IAM user
    Delete {
        /// Do not ask
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageAction {
    /// Bake an image of a profile: one instance with the install only, imaged, then
    /// terminated; the profile's launches then boot from the image
    Build {
        /// The profile to bake
        #[arg(long, short = 'p')]
        profile: String,
        /// Only say what would be done
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProfilesAction {
    /// Print a profile with inheritance resolved
    Show { name: String },
}

#[derive(Debug, Args)]
pub struct LaunchOptions {
    /// Cluster profile (see `stratus profiles`)
    #[arg(long, short = 'p')]
    pub profile: Option<String>,
    /// A value for the templates, as KEY=VALUE (repeatable; `{{env.KEY}}`)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Wait for the nodes to run, but do not connect to them or configure anything
    #[arg(long)]
    pub no_configure: bool,
    /// Also authorise one of your own key pairs (`stratus keys create NAME`) on every node
    #[arg(long, value_name = "NAME")]
    pub key: Option<String>,
    /// Print the cluster's rate and the policy's decision, and launch nothing (exit 0 if the
    /// policy would admit it, 2 if not)
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct LaunchCluster {
    pub name: String,
    /// Number of workers
    pub count: u32,
    #[command(flatten)]
    pub options: LaunchOptions,
}

#[derive(Debug, Args)]
pub struct LaunchMaster {
    pub name: String,
    #[command(flatten)]
    pub options: LaunchOptions,
}

impl Command {
    /// Whether the command prints JSON (which hides progress bars and status lines).
    pub fn json(&self) -> bool {
        matches!(
            self,
            Command::List { json: true, .. }
                | Command::Exec { json: true, .. }
                | Command::Usage { json: true, .. }
                | Command::Quota { json: true, .. }
                | Command::Accounting {
                    action: AccountingAction::Snapshot { json: true }
                        | AccountingAction::Report { json: true, .. }
                        | AccountingAction::Reap { json: true, .. }
                }
                | Command::Admin {
                    action: AdminAction::Audit { json: true, .. }
                        | AdminAction::Class { json: true }
                        | AdminAction::Preflight { json: true, .. }
                        | AdminAction::Identities {
                            action: IdentitiesAction::List { json: true }
                        }
                }
                | Command::Identity {
                    action: IdentityAction::Show { json: true }
                }
                | Command::Keys {
                    action: KeysAction::List { json: true }
                }
                | Command::Reconcile { json: true, .. }
                | Command::Extend { json: true, .. }
        )
    }
}
