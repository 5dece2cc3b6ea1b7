//! placeholder: see the issue for this component
