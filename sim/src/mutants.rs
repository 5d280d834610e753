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
