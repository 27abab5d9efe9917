"""Triton kernels. Only torch, triton and einops here: never import attnlab.*."""
