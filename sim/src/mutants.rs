//! Running the simulator with one of the core's planted bugs switched on
//! (`mutants` feature; see `purchase_saga::mutants`). Without the feature
//! there is no mutant to switch on and naming one is an error.

/// The planted bugs this build can switch on, by name.
pub fn names() -> Vec<&'static str> {
    #[cfg(feature = "mutants")]
    {
        purchase_saga::mutants::Mutant::ALL
            .iter()
            .filter(|m| m.simulated())
            .map(|m| m.name())
            .collect()
    }
    #[cfg(not(feature = "mutants"))]
    {
        Vec::new()
    }
}

/// Runs `f` with the mutant `name` active on this thread (a run is one
/// thread), or with none.
pub fn with<T>(name: Option<&str>, f: impl FnOnce() -> T) -> Result<T, String> {
    let Some(name) = name else { return Ok(f()) };
    #[cfg(feature = "mutants")]
    {
        let mutant = purchase_saga::mutants::Mutant::from_name(name)
            .ok_or_else(|| format!("unknown mutant {name:?}; known: {}", names().join(", ")))?;
        Ok(purchase_saga::mutants::with(Some(mutant), f))
    }
    #[cfg(not(feature = "mutants"))]
    {
        drop(f);
        Err(format!(
            "mutant {name:?}: saga-sim was built without `--features mutants`"
        ))
    }
}

/// Every planted bug this build can switch on, by name, whether or not the
/// simulator runs the code it lives in (for `saga-sim mutants`, which also
/// runs torture and names differential tests).
pub fn all_names() -> Vec<&'static str> {
    #[cfg(feature = "mutants")]
    {
        purchase_saga::mutants::Mutant::ALL
            .iter()
            .map(|m| m.name())
            .collect()
    }
    #[cfg(not(feature = "mutants"))]
    {
        Vec::new()
    }
}

/// Whether the simulator's hunt includes the mutant `name`
/// (`Mutant::simulated`).
pub fn simulated(name: &str) -> bool {
    names().contains(&name)
}

/// Switches the mutant `name` on for every thread of the process (torture
/// runs on a multi-threaded runtime), or all off.
pub fn activate_process(name: Option<&str>) -> Result<(), String> {
    #[cfg(feature = "mutants")]
    {
        let mutant = match name {
            None => None,
            Some(name) => Some(
                purchase_saga::mutants::Mutant::from_name(name)
                    .ok_or_else(|| format!("unknown mutant {name:?}; known: {}", all_names().join(", ")))?,
            ),
        };
        purchase_saga::mutants::activate_process(mutant);
        Ok(())
    }
    #[cfg(not(feature = "mutants"))]
    {
        match name {
            None => Ok(()),
            Some(name) => Err(format!(
                "mutant {name:?}: saga-sim was built without `--features mutants`"
            )),
        }
    }
}

/// The differential test that catches the mutant `name` when neither the
/// simulator nor torture does: adapter bugs that show only in a sequence of
/// operations the runtime rarely produces. `.ci/run` runs these tests with
/// the mutant switched on.
pub fn differential_test(name: &str) -> Option<&'static str> {
    match name {
        "claim-drops-entries" | "trim-below-pending" => Some("tests/bus_model_vs_redis.rs"),
        "pg-no-row-lock" | "pg-batch-no-row-lock" | "prune-inside-horizon" => {
            Some("tests/store_model_vs_postgres.rs")
        }
        _ => None,
    }
}

/// The check of the violation a simulator run found first in simulated
/// time (the trace logs each finding when it is made), else the first in
/// the sorted list.
pub fn first_in_time(outcome: &crate::run::SimOutcome) -> Option<String> {
    outcome
        .entries
        .iter()
        .find_map(|e| {
            let rest = e.text.strip_prefix("VIOLATION [")?;
            rest.split_once(']').map(|(check, _)| check.to_string())
        })
        .or_else(|| outcome.violations.first().map(|v| v.check.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_differential_test_names_an_adapter_mutant() {
        for name in [
            "claim-drops-entries",
            "trim-below-pending",
            "pg-no-row-lock",
            "pg-batch-no-row-lock",
            "prune-inside-horizon",
        ] {
            assert!(differential_test(name).is_some(), "{name}");
        }
        assert_eq!(differential_test("double-refund"), None);
        #[cfg(feature = "mutants")]
        for m in purchase_saga::mutants::Mutant::ALL {
            assert_eq!(
                differential_test(m.name()).is_some(),
                m.in_adapter(),
                "{}: the differential tests cover exactly the adapter mutants",
                m.name()
            );
        }
    }
}
