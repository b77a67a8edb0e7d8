// Kit is a Linux program (src/Kit/Program.cs says so for the CLI); its unit tests run where it runs.
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]
