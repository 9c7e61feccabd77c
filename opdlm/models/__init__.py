"""The student: conversion of a causal LM, block-causal attention geometry, loading."""
