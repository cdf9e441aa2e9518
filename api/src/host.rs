//! Host TEE detection (spec §5.1): SNP when `/proc/cpuinfo` has `sev_snp` and kvm_amd's
//! `sev_snp` parameter is `Y`; TDX when it has `tdx_host_platform` and kvm_intel's `tdx` is `Y`.

use crate::config::TeeChoice;
use vmm::spec::TeeMode;

fn param_is_yes(path: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.trim() == "Y" || s.trim() == "1")
}

fn has_flag(cpuinfo: &str, flag: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|w| w == flag))
}

/// What this host supports, SNP first as upstream does.
pub fn detect() -> TeeMode {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if has_flag(&cpuinfo, "sev_snp") && param_is_yes("/sys/module/kvm_amd/parameters/sev_snp") {
        TeeMode::Snp
    } else if has_flag(&cpuinfo, "tdx_host_platform")
        && param_is_yes("/sys/module/kvm_intel/parameters/tdx")
    {
        TeeMode::Tdx
    } else {
        TeeMode::None
    }
}

/// Turns the configured choice into the mode VMs are launched with.
pub fn resolve(choice: TeeChoice) -> TeeMode {
    match choice {
        TeeChoice::Auto => detect(),
        TeeChoice::None => TeeMode::None,
        TeeChoice::Snp => TeeMode::Snp,
        TeeChoice::Tdx => TeeMode::Tdx,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_matched_as_whole_words() {
        let info = "processor: 0\nflags\t\t: fpu sev_snp_x sme\n";
        assert!(!has_flag(info, "sev_snp"));
        assert!(has_flag("flags : a sev_snp b\n", "sev_snp"));
    }

    #[test]
    fn explicit_choices_are_kept() {
        assert_eq!(resolve(TeeChoice::Snp), TeeMode::Snp);
        assert_eq!(resolve(TeeChoice::None), TeeMode::None);
    }
}
